//! Tests of `conn::grpc_health` (being written).
