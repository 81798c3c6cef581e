//! Operating-system probes: the monotonic clock shared by publisher and
//! subscribers, `RLIMIT_NOFILE`, process CPU time and RSS from `/proc`, the
//! kernel's TCP socket memory from `/proc/net/sockstat`, and the client's own
//! CPU time (`getrusage`, `CLOCK_THREAD_CPUTIME_ID`).
//!
//! Everything here is Linux-only, like the harness.

use std::io;

/// `CLOCK_MONOTONIC` in nanoseconds. The publisher stamps each event with it
/// and the subscribers (same process, same clock) subtract it on receipt.
#[inline]
pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time consumed by the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock ids used are valid.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// User + system CPU time of this whole process, in seconds (`getrusage`).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if rl.rlim_cur < rl.rlim_max {
        let want = libc::rlimit {
            rlim_cur: rl.rlim_max,
            rlim_max: rl.rlim_max,
        };
        // SAFETY: `want` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(io::Error::last_os_error());
        }
        rl.rlim_cur = rl.rlim_max;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Ok(rl.rlim_cur as u64)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Size of a memory page in bytes.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// utime + stime of process `pid` in seconds, from `/proc/PID/stat`.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&s).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime in clock ticks from the text of a `/proc/PID/stat` file.
/// The command name (field 2) may contain spaces and parentheses, so fields are
/// counted after the last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The soft "Max open files" limit of process `pid` (`/proc/PID/limits`).
pub fn proc_nofile_limit(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Kernel memory held by TCP sockets, in bytes: `TCP: … mem P` of
/// `/proc/net/sockstat` (pages) × page size. System-wide, so on loopback it
/// counts both the client's and the server's sockets.
pub fn tcp_mem_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_sockstat_mem(&s).map(|pages| pages * page_size())
}

/// The `mem` figure (pages) of the `TCP:` line of `/proc/net/sockstat`.
pub fn parse_sockstat_mem(s: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_ascii_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// Kernel slab memory in bytes (`Slab:` of `/proc/meminfo`): socket, inode
/// and other kernel objects; system-wide, so it moves with anything else too.
pub fn slab_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_ascii_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` so that `bind(addr, 0)` before `connect`
/// defers the port choice to `connect`, which then only needs the full
/// 4-tuple to be unique (more connections per source address).
pub fn set_bind_no_port(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: fd is an open socket; the option value is a valid c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Starts a non-blocking TCP connect from `src` (port chosen at connect, see
/// [`set_bind_no_port`]) to `addr`, with `TCP_NODELAY`.
pub fn connect_from(
    src: std::net::Ipv4Addr,
    addr: std::net::SocketAddr,
) -> io::Result<mio::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::AsRawFd;
    let sock = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    sock.set_nodelay(true)?;
    set_bind_no_port(sock.as_raw_fd());
    sock.bind(&std::net::SocketAddr::new(src.into(), 0).into())?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

/// Number of CPUs this process may run on (`sched_getaffinity`).
pub fn affinity_cpus() -> usize {
    // SAFETY: an all-zero cpu_set_t is valid; the size passed matches it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            (libc::CPU_COUNT(&set) as usize).max(1)
        } else {
            1
        }
    }
}

/// Size of the ephemeral port range (`net.ipv4.ip_local_port_range`).
pub fn local_port_range() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_ascii_whitespace().map(|v| v.parse::<u64>().ok());
            let lo = it.next()??;
            let hi = it.next()??;
            Some(hi.saturating_sub(lo) + 1)
        })
        .unwrap_or(28232)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields() {
        let s = "1234 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(s), Some(333));
    }

    #[test]
    fn sockstat_mem() {
        let s = "sockets: used 10\nTCP: inuse 5 orphan 0 tw 1 alloc 7 mem 42\nUDP: inuse 1 mem 3\n";
        assert_eq!(parse_sockstat_mem(s), Some(42));
    }

    #[test]
    fn own_process_probes() {
        let pid = std::process::id();
        assert!(proc_cpu_seconds(pid).is_some());
        assert!(proc_rss_bytes(pid).unwrap() > 0);
        assert!(now_ns() > 0);
    }
}
