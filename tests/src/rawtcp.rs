//! A TCP client written segment by segment on a raw socket, to send what a kernel's own stack
//! never would on demand: a retransmission that partly overlaps bytes already delivered.
//!
//! For use inside a [`crate::Netns`] only: the client's port has no socket, so the kernel would
//! answer the server's segments with resets; [`RawTcp::connect`] adds the iptables rule that
//! drops them (it goes with the namespace).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// One connection from `127.0.0.1:port` to `to`, after the handshake.
pub struct RawTcp {
    sock: Socket,
    port: u16,
    to: SocketAddrV4,
    /// Our sequence number of stream byte 0.
    isn: u32,
    /// The peer's next sequence number (what we acknowledge).
    ack: u32,
}

impl RawTcp {
    /// Opens the raw socket, drops the kernel's resets from `port`, and does the handshake with
    /// `to` (both on 127.0.0.1) within 5 s.
    pub fn connect(port: u16, to: SocketAddrV4) -> io::Result<RawTcp> {
        crate::netns::run(
            "iptables",
            &[
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "--sport",
                &port.to_string(),
                "--tcp-flags",
                "RST",
                "RST",
                "-j",
                "DROP",
            ],
        );
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::TCP))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut c = RawTcp {
            sock,
            port,
            to,
            isn: 0x1000_0000,
            ack: 0,
        };
        // SYN with MSS 1460, then the SYN-ACK's sequence, then the ACK.
        c.send(c.isn.wrapping_sub(1), SYN, &[2, 4, 0x05, 0xb4], &[])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no SYN-ACK"));
            }
            if let Some((flags, seq)) = c.receive()? {
                if flags & (SYN | ACK) == SYN | ACK {
                    c.ack = seq.wrapping_add(1);
                    break;
                }
            }
        }
        c.send(c.isn, ACK, &[], &[])?;
        Ok(c)
    }

    /// Sends stream bytes `data` starting at stream offset `offset` (0 = the first byte), as one
    /// segment: any offset, so a segment may repeat bytes sent before.
    pub fn send_at(&self, offset: u32, data: &[u8]) -> io::Result<()> {
        self.send(self.isn.wrapping_add(offset), ACK | PSH, &[], data)
    }

    /// Sends FIN after `len` stream bytes.
    pub fn fin_at(&self, len: u32) -> io::Result<()> {
        self.send(self.isn.wrapping_add(len), ACK | FIN, &[], &[])
    }

    fn send(&self, seq: u32, flags: u8, options: &[u8], data: &[u8]) -> io::Result<()> {
        let hlen = 20 + options.len();
        let mut seg = Vec::with_capacity(hlen + data.len());
        seg.extend_from_slice(&self.port.to_be_bytes());
        seg.extend_from_slice(&self.to.port().to_be_bytes());
        seg.extend_from_slice(&seq.to_be_bytes());
        seg.extend_from_slice(&self.ack.to_be_bytes());
        seg.push(((hlen / 4) as u8) << 4);
        seg.push(flags);
        seg.extend_from_slice(&65535u16.to_be_bytes());
        seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        seg.extend_from_slice(options);
        seg.extend_from_slice(data);
        let sum = checksum(Ipv4Addr::LOCALHOST, *self.to.ip(), &seg);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
        let dst = SockAddr::from(SocketAddr::V4(SocketAddrV4::new(*self.to.ip(), 0)));
        self.sock.send_to(&seg, &dst).map(|_| ())
    }

    /// The next segment from the peer to our port: its flags and sequence number; `None` on a
    /// read timeout or another connection's packet.
    fn receive(&mut self) -> io::Result<Option<(u8, u32)>> {
        let mut buf = [0u8; 2048];
        let n = match (&self.sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n < ihl + 20 {
            return Ok(None);
        }
        let tcp = &buf[ihl..n];
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        if sport != self.to.port() || dport != self.port {
            return Ok(None);
        }
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        Ok(Some((tcp[13], seq)))
    }
}

/// The TCP checksum of `seg` (its checksum field zero) with the IPv4 pseudo-header.
fn checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for pair in b.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |&lo| u32::from(lo));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
