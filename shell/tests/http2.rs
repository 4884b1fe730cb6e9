//! Tests of `conn::http2::Http2Connection` (being written).
