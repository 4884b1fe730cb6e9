//! One connection's life as a picture: a seeded run drawn over virtual time, so that a
//! failing seed can be looked at, not only read (`persistent-connection-sim --seed S
//! --timeline out.svg`).
//!
//! A [`Timeline`] watches a run (it is a [`Watch`]) and records, from the machine's inputs
//! and effects alone:
//!
//! - **events**: each emitted event from its emission until its handler returned, coloured
//!   by kind and lettered (`A`ttemptingToConnect, `O`btainedAddress, `F`ailedToConnect,
//!   `C`onnected, `D`isconnected);
//! - **attempts**: each from its retry timer's start until its outcome, the lookup and the
//!   connect as segments, ended green (connected), red (failed), black (aborted) or grey
//!   (cancelled, or closed), and its retry timer's deadline as a tick; on two rows, odd
//!   and even attempts, so that a late answer to a cancelled attempt does not hide the next
//!   one;
//! - **connections**: each from becoming current until it no longer is, then closing until
//!   its `Closed` (connections that never became current, closed at once, on a second row);
//! - **close**: the user's `close()`, R11, R12 aborts, `CloseFinished` and, for a failing
//!   run, the violation, as marks and vertical lines across the picture.
//!
//! ```
//! use persistent_connection_sim::timeline::record_seed;
//! use persistent_connection_sim::world::RunOptions;
//!
//! let (result, timeline) = record_seed(3, &RunOptions::default());
//! assert!(result.is_ok());
//! let svg = timeline.svg("seed 3");
//! assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
//! assert!(timeline.attempts() > 0 && timeline.connections() > 0);
//! ```

use std::fmt::Write as _;

use persistent_connection_core::{
    AttemptError, AttemptId, ConnId, Effect, EventId, EventKind, Input, Instant,
};

use crate::checker::Violation;
use crate::model::{SimEffect, SimInput};
use crate::world::{Failure, RunOptions, RunReport, Watch, run_seed_watched};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Connected,
    Failed,
    Aborted,
    /// Cancelled by close, or ended by it.
    Cancelled,
}

#[derive(Debug)]
struct AttemptSpan {
    id: AttemptId,
    start: Instant,
    deadline: Option<Instant>,
    lookup: Option<(Instant, Option<Instant>)>,
    connect: Option<(Instant, Option<Instant>)>,
    end: Option<(Instant, Outcome)>,
}

#[derive(Debug)]
struct ConnSpan {
    id: ConnId,
    label: String,
    current: Option<(Instant, Option<Instant>)>,
    closing: Option<(Instant, Option<Instant>)>,
}

#[derive(Debug)]
struct EventSpan {
    id: EventId,
    kind: EventKind,
    emitted: Instant,
    handled: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    CloseRequested,
    CloseWhenCurrent,
    Abort,
    CloseFinished,
    TimerFired,
}

/// What a run did over virtual time, recorded by watching it; [`Timeline::svg`] draws it.
#[derive(Debug, Default)]
pub struct Timeline {
    attempts: Vec<AttemptSpan>,
    conns: Vec<ConnSpan>,
    events: Vec<EventSpan>,
    marks: Vec<(Instant, Mark)>,
    violation: Option<(Instant, String)>,
    last: Instant,
}

/// Runs `seed` (as [`crate::world::run_seed`] does: the same run, the same trace hash)
/// and records its timeline. A failing run's violation is drawn too.
pub fn record_seed(seed: u64, options: &RunOptions) -> (Result<RunReport, Box<Failure>>, Timeline) {
    let mut timeline = Timeline::default();
    let result = run_seed_watched(seed, options, &mut timeline);
    if let Err(failure) = &result {
        timeline.violation(&failure.violation);
    }
    (result, timeline)
}

impl Timeline {
    /// Attempts recorded.
    pub fn attempts(&self) -> usize {
        self.attempts.len()
    }

    /// Connections recorded (current ones and those closed at once).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Events recorded.
    pub fn events(&self) -> usize {
        self.events.len()
    }

    /// Records a violation, drawn as a red line at its time.
    pub fn violation(&mut self, v: &Violation) {
        self.last = self.last.max(v.now);
        self.violation = Some((v.now, v.to_string()));
    }

    fn attempt(&mut self, id: AttemptId) -> Option<&mut AttemptSpan> {
        self.attempts.iter_mut().rev().find(|a| a.id == id)
    }

    fn conn(&mut self, id: ConnId) -> Option<&mut ConnSpan> {
        self.conns.iter_mut().rev().find(|c| c.id == id)
    }

    /// The attempt an `AttemptOutcome` ends: the latest one still open.
    fn open_attempt(&mut self) -> Option<&mut AttemptSpan> {
        self.attempts.iter_mut().rev().find(|a| a.end.is_none())
    }
}

impl<M> Watch<M> for Timeline {
    fn on_input(&mut self, now: Instant, input: &SimInput, _machine: &M) {
        self.last = self.last.max(now);
        match input {
            Input::AddressResult { attempt, .. } => {
                if let Some(a) = self.attempt(*attempt)
                    && let Some((_, end @ None)) = &mut a.lookup
                {
                    *end = Some(now);
                }
            }
            Input::ConnectResult { attempt, .. } => {
                if let Some(a) = self.attempt(*attempt)
                    && let Some((_, end @ None)) = &mut a.connect
                {
                    *end = Some(now);
                }
            }
            Input::Closed { conn } => {
                if let Some(c) = self.conn(*conn)
                    && let Some((_, end @ None)) = &mut c.closing
                {
                    *end = Some(now);
                }
            }
            Input::EventHandled { event } => {
                if let Some(e) = self.events.iter_mut().rev().find(|e| e.id == *event)
                    && e.handled.is_none()
                {
                    e.handled = Some(now);
                }
            }
            Input::TimerFired => self.marks.push((now, Mark::TimerFired)),
            Input::CloseRequested => self.marks.push((now, Mark::CloseRequested)),
            Input::CloseWhenCurrentConnectionIsClosed => {
                self.marks.push((now, Mark::CloseWhenCurrent));
            }
            Input::Abort { .. } => self.marks.push((now, Mark::Abort)),
            // Handover and retry now (R15, R16) show through the attempts and connections
            // they make.
            Input::Handover { .. } | Input::CancelHandover | Input::RetryNow { .. } => {}
        }
    }

    fn on_effect(&mut self, now: Instant, effect: &SimEffect) {
        self.last = self.last.max(now);
        match effect {
            Effect::Emit { id, event } => self.events.push(EventSpan {
                id: *id,
                kind: event.kind(),
                emitted: now,
                handled: None,
            }),
            Effect::StartTimer {
                attempt, deadline, ..
            } => {
                if let Some(a) = self.attempt(*attempt) {
                    a.deadline = Some(*deadline);
                } else {
                    self.attempts.push(AttemptSpan {
                        id: *attempt,
                        start: now,
                        deadline: Some(*deadline),
                        lookup: None,
                        connect: None,
                        end: None,
                    });
                }
            }
            Effect::GetAddress { attempt } => {
                if self.attempt(*attempt).is_none() {
                    self.attempts.push(AttemptSpan {
                        id: *attempt,
                        start: now,
                        deadline: None,
                        lookup: None,
                        connect: None,
                        end: None,
                    });
                }
                if let Some(a) = self.attempt(*attempt) {
                    a.lookup = Some((now, None));
                }
            }
            Effect::Connect { attempt, .. } => {
                if let Some(a) = self.attempt(*attempt) {
                    a.connect = Some((now, None));
                }
            }
            Effect::CancelAttempt { attempt } => {
                if let Some(a) = self.attempt(*attempt)
                    && a.end.is_none()
                {
                    a.end = Some((now, Outcome::Cancelled));
                }
            }
            Effect::AttemptOutcome(result) => {
                let outcome = match result {
                    Ok(_) => Outcome::Connected,
                    Err(AttemptError::Failed(_)) => Outcome::Failed,
                    Err(AttemptError::Aborted(_)) => Outcome::Aborted,
                    Err(AttemptError::Closed) => Outcome::Cancelled,
                };
                if let Some(a) = self.open_attempt() {
                    a.end = Some((now, outcome));
                }
            }
            Effect::BecameCurrent { conn, connection } => self.conns.push(ConnSpan {
                id: *conn,
                label: format!("{connection:?}"),
                current: Some((now, None)),
                closing: None,
            }),
            Effect::NoLongerCurrent { conn } => {
                if let Some(c) = self.conn(*conn)
                    && let Some((_, end @ None)) = &mut c.current
                {
                    *end = Some(now);
                }
            }
            Effect::CloseConnection { conn, connection } => {
                if self.conn(*conn).is_none() {
                    self.conns.push(ConnSpan {
                        id: *conn,
                        label: format!("{connection:?}"),
                        current: None,
                        closing: None,
                    });
                }
                if let Some(c) = self.conn(*conn)
                    && c.closing.is_none()
                {
                    c.closing = Some((now, None));
                }
            }
            Effect::CloseFinished => self.marks.push((now, Mark::CloseFinished)),
        }
    }
}

fn secs(t: Instant) -> f64 {
    t.since_origin().as_secs_f64()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn kind_style(kind: EventKind) -> (&'static str, &'static str) {
    match kind {
        EventKind::AttemptingToConnect => ("A", "#1f77b4"),
        EventKind::ObtainedAddress => ("O", "#17becf"),
        EventKind::FailedToConnect => ("F", "#d62728"),
        EventKind::Connected => ("C", "#2ca02c"),
        EventKind::Disconnected => ("D", "#ff7f0e"),
        EventKind::HandedOver => ("H", "#9467bd"),
    }
}

fn outcome_colour(o: Option<Outcome>) -> &'static str {
    match o {
        Some(Outcome::Connected) => "#2ca02c",
        Some(Outcome::Failed) => "#d62728",
        Some(Outcome::Aborted) => "#000000",
        Some(Outcome::Cancelled) | None => "#999999",
    }
}

impl Timeline {
    /// The picture: an SVG document of the lanes described in the [module docs](self),
    /// over the run's virtual time, titled `title`. The same run gives the same bytes.
    pub fn svg(&self, title: &str) -> String {
        let (w, left, right) = (1400.0f64, 130.0f64, 20.0f64);
        let plot_w = w - left - right;
        // Lanes: name, top, height.
        let lanes = [
            ("events", 60.0, 40.0),
            ("attempts", 120.0, 70.0),
            ("connections", 210.0, 60.0),
            ("close", 290.0, 40.0),
        ];
        let h = 440.0;
        let bottom = 330.0;
        let t_end = secs(self.last).max(1e-3) * 1.02;
        let x = |t: Instant| left + plot_w * secs(t) / t_end;
        let x_or_end = |t: Option<Instant>| t.map_or(left + plot_w, x);
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="22" font-size="14">{}</text>"#,
            escape(title)
        );
        let _ = writeln!(
            out,
            r#"<text x="{left}" y="40">{} events, {} attempts, {} connections over {:.3} s of virtual time</text>"#,
            self.events.len(),
            self.attempts.len(),
            self.conns.len(),
            secs(self.last)
        );
        for (name, top, height) in lanes {
            let _ = writeln!(
                out,
                r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{height}" fill="#fafafa" stroke="#ccc"/><text x="{:.1}" y="{:.1}" text-anchor="end">{name}</text>"##,
                left - 8.0,
                top + height / 2.0 + 4.0
            );
        }
        // Time axis.
        for k in 0..=10 {
            let t = t_end * f64::from(k) / 10.0;
            let tx = left + plot_w * f64::from(k) / 10.0;
            let _ = writeln!(
                out,
                r##"<line x1="{tx:.1}" y1="55" x2="{tx:.1}" y2="{bottom}" stroke="#eee"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle">{t:.3}</text>"##,
                bottom + 16.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">virtual time, seconds</text>"#,
            left + plot_w / 2.0,
            bottom + 32.0
        );
        // Events: handler spans, lettered.
        let (etop, eh) = (lanes[0].1, lanes[0].2);
        for e in &self.events {
            let (letter, colour) = kind_style(e.kind);
            let x0 = x(e.emitted);
            let x1 = x_or_end(e.handled).max(x0 + 1.0);
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.35" stroke="{colour}"><title>{:?} {:?}: emitted {:.6} s, handled {}</title></rect><text x="{x0:.1}" y="{:.1}" fill="{colour}" font-size="10">{letter}</text>"#,
                etop + 16.0,
                x1 - x0,
                eh - 20.0,
                e.id,
                e.kind,
                secs(e.emitted),
                e.handled
                    .map_or("never".to_owned(), |t| format!("{:.6} s", secs(t))),
                etop + 12.0
            );
        }
        // Attempts on two rows.
        let atop = lanes[1].1;
        for (i, a) in self.attempts.iter().enumerate() {
            let row = atop + 6.0 + 32.0 * (i % 2) as f64;
            let end = a.end.map(|(t, _)| t);
            let x0 = x(a.start);
            let x1 = x_or_end(end).max(x0 + 1.0);
            let outcome = a.end.map(|(_, o)| o);
            let _ = writeln!(
                out,
                r##"<rect x="{x0:.1}" y="{row:.1}" width="{:.1}" height="26" fill="none" stroke="#bbb"><title>{} {:.6}–{} s, outcome {:?}</title></rect>"##,
                x1 - x0,
                a.id,
                secs(a.start),
                end.map_or("open".to_owned(), |t| format!("{:.6}", secs(t))),
                outcome
            );
            for (seg, colour, label) in [
                (a.lookup, "#9ecae1", "lookup"),
                (a.connect, "#3182bd", "connect"),
            ] {
                if let Some((s, e)) = seg {
                    let s0 = x(s);
                    let s1 = x_or_end(e.or(end)).max(s0 + 1.0);
                    let _ = writeln!(
                        out,
                        r#"<rect x="{s0:.1}" y="{:.1}" width="{:.1}" height="10" fill="{colour}"><title>{label}</title></rect>"#,
                        row + 8.0,
                        s1 - s0
                    );
                }
            }
            if let Some(d) = a.deadline {
                let dx = x(d);
                let _ = writeln!(
                    out,
                    r##"<line x1="{dx:.1}" y1="{row:.1}" x2="{dx:.1}" y2="{:.1}" stroke="#9467bd" stroke-width="1.5"><title>retry timer deadline {:.6} s</title></line>"##,
                    row + 26.0,
                    secs(d)
                );
            }
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{row:.1}" width="3" height="26" fill="{}"/>"#,
                x1 - 3.0,
                outcome_colour(outcome)
            );
        }
        // Connections: current (green), then closing (orange); never-current ones below.
        let ctop = lanes[2].1;
        for c in &self.conns {
            let row = if c.current.is_some() {
                ctop + 6.0
            } else {
                ctop + 34.0
            };
            if let Some((s, e)) = c.current {
                let s0 = x(s);
                let s1 = x_or_end(e).max(s0 + 1.0);
                let _ = writeln!(
                    out,
                    r##"<rect x="{s0:.1}" y="{row:.1}" width="{:.1}" height="20" fill="#2ca02c" fill-opacity="0.6"><title>{} {}: current {:.6}–{} s</title></rect><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"##,
                    s1 - s0,
                    c.id,
                    escape(&c.label),
                    secs(s),
                    e.map_or("end".to_owned(), |t| format!("{:.6}", secs(t))),
                    s0 + 2.0,
                    row + 14.0,
                    escape(&c.label)
                );
            }
            if let Some((s, e)) = c.closing {
                let s0 = x(s);
                let s1 = x_or_end(e).max(s0 + 1.0);
                let _ = writeln!(
                    out,
                    r##"<rect x="{s0:.1}" y="{row:.1}" width="{:.1}" height="20" fill="#ff7f0e" fill-opacity="0.6"><title>{} {}: closing {:.6}–{} s</title></rect>"##,
                    s1 - s0,
                    c.id,
                    escape(&c.label),
                    secs(s),
                    e.map_or("never closed".to_owned(), |t| format!("{:.6}", secs(t)))
                );
            }
        }
        // Marks; close-related ones as lines across every lane.
        let mtop = lanes[3].1;
        for &(t, mark) in &self.marks {
            let mx = x(t);
            // Labels on staggered lines, so marks at one instant stay readable.
            let (colour, label, across, dy) = match mark {
                Mark::TimerFired => ("#9467bd", "", false, 0.0),
                Mark::CloseRequested => ("#000000", "close()", true, 11.0),
                Mark::CloseWhenCurrent => ("#8c564b", "R11", true, 23.0),
                Mark::Abort => ("#e377c2", "abort", true, 23.0),
                Mark::CloseFinished => ("#000000", "finished", true, 35.0),
            };
            if across {
                let _ = writeln!(
                    out,
                    r#"<line x1="{mx:.1}" y1="55" x2="{mx:.1}" y2="{bottom}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="{colour}">{label}</text>"#,
                    mx + 3.0,
                    mtop + dy
                );
            } else {
                // Timer fires: a small tick under the attempts.
                let _ = writeln!(
                    out,
                    r#"<line x1="{mx:.1}" y1="{:.1}" x2="{mx:.1}" y2="{:.1}" stroke="{colour}"><title>TimerFired {:.6} s</title></line>"#,
                    lanes[1].1 + lanes[1].2 - 4.0,
                    lanes[1].1 + lanes[1].2,
                    secs(t)
                );
            }
        }
        if let Some((t, text)) = &self.violation {
            let vx = x(*t);
            let _ = writeln!(
                out,
                r#"<line x1="{vx:.1}" y1="55" x2="{vx:.1}" y2="{bottom}" stroke="red" stroke-width="2"/><text x="{left}" y="{:.1}" fill="red">VIOLATION at {:.6} s: {}</text>"#,
                bottom + 50.0,
                secs(*t),
                escape(text)
            );
        }
        // Legend.
        let ly = h - 12.0;
        let mut lx = left;
        let legend: [(&str, &str); 10] = [
            ("#9ecae1", "lookup"),
            ("#3182bd", "connect"),
            ("#2ca02c", "connected / current"),
            ("#d62728", "failed"),
            ("#000000", "aborted"),
            ("#999999", "cancelled"),
            ("#9467bd", "retry deadline / timer fired"),
            ("#ff7f0e", "closing"),
            ("#1f77b4", "events: A O F C D"),
            ("red", "violation"),
        ];
        for (colour, label) in legend {
            let _ = writeln!(
                out,
                r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="10" fill="{colour}"/><text x="{:.1}" y="{ly:.1}">{label}</text>"#,
                ly - 9.0,
                lx + 16.0
            );
            lx += 22.0 + 6.5 * label.len() as f64;
        }
        out.push_str("</svg>\n");
        out
    }
}
