//! stubborn-io as every program of this crate configures it (the storm and failover
//! benchmarks, the Redis drill and its `stubborn_lost_request` example): the test kit's
//! `stubborn` module (`persistent_connection_testkit::stubborn`), under the name the
//! benchmark's modules use.

pub use persistent_connection_testkit::stubborn::{Lookup, LookupStream, options};
