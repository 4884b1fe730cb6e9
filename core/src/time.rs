//! Time as the machine sees it: a value handed in by the driver, never read from a clock.

use core::time::Duration;

/// A point in time on the driver's clock, as a duration since an origin the driver picks
/// (the shell uses the moment the connection was created; the simulator uses zero).
///
/// The machine never reads a clock: every input arrives with an `Instant`, and every
/// deadline it asks for is an `Instant`. Arithmetic saturates, so `Duration::MAX` delays
/// are harmless.
///
/// ```
/// use core::time::Duration;
/// use persistent_connection_core::Instant;
///
/// let t = Instant::ZERO + Duration::from_secs(3);
/// assert_eq!(t.since_origin(), Duration::from_secs(3));
/// assert_eq!(Instant::MAX.saturating_add(Duration::MAX), Instant::MAX);
/// assert_eq!(t.saturating_duration_since(Instant::MAX), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Instant(Duration);

impl Instant {
    /// The origin of the driver's clock.
    pub const ZERO: Instant = Instant(Duration::ZERO);
    /// The latest representable instant; deadlines saturate here.
    pub const MAX: Instant = Instant(Duration::MAX);

    /// The instant `since_origin` after the origin.
    pub const fn from_since_origin(since_origin: Duration) -> Instant {
        Instant(since_origin)
    }

    /// How long after the origin this instant is.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// `self + d`, or [`Instant::MAX`] if that overflows.
    pub const fn saturating_add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }

    /// `self - earlier`, or zero if `earlier` is later than `self`.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    /// Saturating: never panics.
    fn add(self, d: Duration) -> Instant {
        self.saturating_add(d)
    }
}
