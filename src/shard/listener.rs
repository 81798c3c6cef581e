//! Listening sockets: every shard binds the same address with `SO_REUSEPORT`, so
//! the kernel spreads new connections across shards without a shared accept lock.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Bind `count` listeners on `addr`. When `addr`'s port is 0 the first bind picks
/// a port and the others join it.
///
/// `SO_REUSEPORT` would also let another process of the same user join the
/// port and take part of its connections (a second herald started by mistake:
/// in embedded mode a subscriber on one and a publish on the other is a lost
/// event). So the address is first claimed by a socket without it, which the
/// kernel refuses while anything listens there (`AddrInUse`), and held, bound
/// but not listening, until the shards listen: their binds pass (`SO_REUSEADDR`
/// on both, and the claim does not listen), another process's claim does not.
pub fn bind_all(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    let claim = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    claim.set_reuse_address(true)?;
    claim.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                e.kind(),
                "address in use: another process (another herald?) listens there",
            )
        } else {
            e
        }
    })?;
    let addr = claim
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet address"))?;
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        all.push(bind_one(addr)?);
    }
    drop(claim);
    Ok(all)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_process_cannot_join_the_port_but_the_shards_can() {
        let ours = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(ours.len(), 3);
        let addr = ours[0].local_addr().unwrap();
        assert!(ours.iter().all(|l| l.local_addr().unwrap() == addr));
        // What a second herald does: refused.
        let e = bind_all(addr, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("address in use"), "{e}");
        drop(ours);
        // Free again once the first is gone.
        assert_eq!(bind_all(addr, 1).unwrap().len(), 1);
    }
}
