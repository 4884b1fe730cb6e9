//! TCP: [`TcpConnection`], a connection that notices the peer closing and is a stream
//! (`stream.rs`), and [`TcpOptions`], the socket options it is made with (`options.rs`).

mod options;
mod stream;

pub use options::{DEFAULT_KEEPALIVE, DEFAULT_USER_TIMEOUT, Keepalive, TcpOptions};
pub use stream::TcpConnection;
