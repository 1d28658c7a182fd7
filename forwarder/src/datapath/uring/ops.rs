//! What a ring operation was, encoded in its `user_data`: the operation kind, the direction and
//! the index of its session, listener or queued client, so that a completion finds its owner
//! without a lookup table. Also the bit each session operation has in `Conn::ops`, which says
//! what is in flight (a session is freed only when nothing is).

/// user_data values that are not session operations.
pub(super) const UD_WAKE: u64 = u64::MAX;
pub(super) const UD_TICK: u64 = u64::MAX - 1;

/// What an operation was, in the low bits of its user_data; above them is the index of the
/// session (`conns`), of the listener (`Accept`) or of the queued client (`Connect*`).
/// The session operations come first: they have a bit each in `Conn::ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// A plain poll: the direction splices inline when it fires.
    InPoll = 0,
    SpliceIn = 1,
    SpliceOut = 2,
    OutPoll = 3,
    /// The poll at the head of a `ChainPoll -> SpliceIn -> SpliceOut` chain.
    ChainPoll = 4,
    /// The multishot receive of a message-mode direction (in flight until a completion without
    /// `IORING_CQE_F_MORE`).
    Recv = 5,
    /// The send of a message-mode direction's oldest received buffer.
    Send = 6,
    Cancel = 7,
    Accept = 8,
    Connect = 9,
    ConnectTimeout = 10,
}

/// The session operations, in `end`'s cancelling order.
pub(super) const SESSION_OPS: [Op; 7] = [
    Op::InPoll,
    Op::ChainPoll,
    Op::SpliceIn,
    Op::SpliceOut,
    Op::OutPoll,
    Op::Recv,
    Op::Send,
];

const OP_BITS: u32 = 5;

pub(super) fn user_data(slot: usize, dir: usize, op: Op) -> u64 {
    ((slot as u64) << OP_BITS) | ((op as u64) << 1) | dir as u64
}

pub(super) fn decode(ud: u64) -> (usize, usize, Op) {
    let dir = (ud & 1) as usize;
    let op = match (ud >> 1) & 0b1111 {
        0 => Op::InPoll,
        1 => Op::SpliceIn,
        2 => Op::SpliceOut,
        3 => Op::OutPoll,
        4 => Op::ChainPoll,
        5 => Op::Recv,
        6 => Op::Send,
        7 => Op::Cancel,
        8 => Op::Accept,
        9 => Op::Connect,
        _ => Op::ConnectTimeout,
    };
    ((ud >> OP_BITS) as usize, dir, op)
}

/// Bit of `Conn::ops` for a session operation in flight.
pub(super) fn op_bit(dir: usize, op: Op) -> u16 {
    1 << ((op as u16) * 2 + dir as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_and_session_ops_have_distinct_bits() {
        let all = [
            Op::InPoll,
            Op::SpliceIn,
            Op::SpliceOut,
            Op::OutPoll,
            Op::ChainPoll,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Accept,
            Op::Connect,
            Op::ConnectTimeout,
        ];
        for slot in [0, 1, 4095, 1 << 40] {
            for dir in 0..2 {
                for op in all {
                    assert_eq!(decode(user_data(slot, dir, op)), (slot, dir, op));
                    assert!(user_data(slot, dir, op) < UD_TICK);
                }
            }
        }
        let mut bits = 0u16;
        for dir in 0..2 {
            for op in SESSION_OPS {
                assert_eq!(bits & op_bit(dir, op), 0, "{op:?} shares a bit");
                bits |= op_bit(dir, op);
            }
        }
    }
}
