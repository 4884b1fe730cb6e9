//! A tonic client failing over between two servers (being written).

fn main() {}
