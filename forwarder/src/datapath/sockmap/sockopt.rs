//! The socket calls of the sockmap path: EOF and error waits, `TCP_INFO`, `SIOCOUTQ`,
//! `SIOCINQ`, `SO_RCVLOWAT`, and the clock the program stamps activity with.

// unsafe: getsockopt(TCP_INFO), ioctl(SIOCOUTQ, SIOCINQ), setsockopt(SO_RCVLOWAT).
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Resolves when the peer of `sock` has sent FIN (Ok) or the socket failed (Err). Redirected
/// bytes never wake this: the program consumes them before the socket's waiters are told.
pub(super) async fn closed(sock: &TcpStream) -> io::Result<()> {
    loop {
        let ready = sock.ready(Interest::READABLE).await?;
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        if ready.is_read_closed() {
            return Ok(());
        }
        // A wake-up without EOF (bytes seen on their way to the program): wait for the next one.
        let _ = sock.try_io(Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
    }
}

/// `TCP_INFO` of `sock`.
pub(super) fn tcp_info(sock: &TcpStream) -> io::Result<libc::tcp_info> {
    let fd = sock.as_raw_fd();
    // SAFETY: all-zero bytes are a valid `tcp_info` (integers only).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket borrowed from `sock`; `info` and `len` are valid for writes
    // of `len` bytes, and the kernel writes at most that many.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Bytes ever written into `sock`'s send queue: acknowledged plus still queued.
pub(super) fn queued_bytes(sock: &TcpStream) -> io::Result<u64> {
    let info = tcp_info(sock)?;
    let fd = sock.as_raw_fd();
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (== TIOCOUTQ) writes one int to the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut outq) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked + u64::try_from(outq).unwrap_or(0))
}

/// Bytes in `sock`'s receive queue not read yet (`SIOCINQ`; the FIN not counted). On a socket
/// with a psock the kernel reports the psock's queue instead.
pub(super) fn unread_bytes(sock: &TcpStream) -> io::Result<u64> {
    let mut inq: libc::c_int = 0;
    // SAFETY: SIOCINQ (== FIONREAD) writes one int to the pointer, which is valid.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &raw mut inq) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(inq).unwrap_or(0))
}

/// Sets `SO_RCVLOWAT`. TCP calls `data_ready` (with a sockmap: the program) only once that many
/// bytes are queued, and setting it calls `data_ready` at once if they already are.
pub(super) fn set_rcvlowat(sock: &TcpStream, bytes: libc::c_int) {
    // SAFETY: `sock` is an open socket; the option value is a valid c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "SO_RCVLOWAT failed");
    }
}

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub(super) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}
