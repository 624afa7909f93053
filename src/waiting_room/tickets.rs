//! Queue tickets: what an admitted shopper sends as `Queue-Ticket` to
//! reserve. A ticket is `<expires, unix ms>.<hex HMAC-SHA256>` of the
//! drop, the round, the user and that expiry, under `auth.queue_secret`.
//! The drop, round and user are not in the ticket: reserve recomputes the
//! MAC over the request's own, so a ticket for another user, round or drop
//! fails like a forged one, with no parsing beyond one number.

use jiff::Timestamp;

use crate::domain::{DropId, RoundId, UserId};
use crate::payment::{sign, signature_is_valid};

pub struct Tickets {
    secret: Vec<u8>,
}

/// Why a ticket does not let its bearer reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    Missing,
    Malformed,
    Forged,
    Expired,
}

impl Tickets {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac_input(drop: &DropId, round: &RoundId, user: &UserId, expires_ms: i64) -> String {
        format!(
            "queue-ticket\n{}\n{}\n{}\n{expires_ms}",
            drop.as_str(),
            round.as_str(),
            user.as_str()
        )
    }

    pub fn issue(
        &self,
        drop: &DropId,
        round: &RoundId,
        user: &UserId,
        expires: Timestamp,
    ) -> String {
        let expires_ms = expires.as_millisecond();
        let mac = sign(
            &self.secret,
            Self::mac_input(drop, round, user, expires_ms).as_bytes(),
        );
        format!("{expires_ms}.{mac}")
    }

    /// Checks a ticket for this drop, round and user at `now`.
    pub fn check(
        &self,
        ticket: Option<&str>,
        drop: &DropId,
        round: &RoundId,
        user: &UserId,
        now: Timestamp,
    ) -> Result<(), TicketError> {
        let ticket = ticket.ok_or(TicketError::Missing)?;
        let (expires, mac) = ticket.split_once('.').ok_or(TicketError::Malformed)?;
        let expires_ms: i64 = expires.parse().map_err(|_| TicketError::Malformed)?;
        let input = Self::mac_input(drop, round, user, expires_ms);
        if !signature_is_valid(&self.secret, input.as_bytes(), Some(mac)) {
            return Err(TicketError::Forged);
        }
        if now.as_millisecond() >= expires_ms {
            return Err(TicketError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn ids(drop: &str, round: &str, user: &str) -> (DropId, RoundId, UserId) {
        (
            DropId::parse(drop).unwrap(),
            RoundId::parse(round).unwrap(),
            UserId::parse(user).unwrap(),
        )
    }

    #[test]
    fn a_ticket_holds_only_for_its_drop_round_and_user_until_it_expires() {
        let tickets = Tickets::new("a-queue-secret-of-at-least-32-bytes!!");
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let expires = now + SignedDuration::from_secs(120);
        let (drop, round, user) = ids("phone", "phone@r1", "alice");
        let ticket = tickets.issue(&drop, &round, &user, expires);
        let check = |t: &str, d: &str, r: &str, u: &str, at: Timestamp| {
            let (d, r, u) = ids(d, r, u);
            tickets.check(Some(t), &d, &r, &u, at)
        };
        assert_eq!(check(&ticket, "phone", "phone@r1", "alice", now), Ok(()));
        let forged = Err(TicketError::Forged);
        assert_eq!(check(&ticket, "phone", "phone@r1", "bob", now), forged);
        assert_eq!(check(&ticket, "phone", "phone@r2", "alice", now), forged);
        assert_eq!(check(&ticket, "other", "other@r1", "alice", now), forged);
        assert_eq!(
            check(&ticket, "phone", "phone@r1", "alice", expires),
            Err(TicketError::Expired)
        );
        // A later expiry with the same MAC, or another secret's MAC.
        let (_, mac) = ticket.split_once('.').unwrap();
        let stretched = format!(
            "{}.{mac}",
            (expires + SignedDuration::from_hours(1)).as_millisecond()
        );
        assert_eq!(check(&stretched, "phone", "phone@r1", "alice", now), forged);
        let other = Tickets::new("another-secret-of-at-least-32-bytes!!!")
            .issue(&drop, &round, &user, expires);
        assert_eq!(check(&other, "phone", "phone@r1", "alice", now), forged);
        for bad in ["", "x", "12.", ".abc", "abc.def"] {
            assert_ne!(
                check(bad, "phone", "phone@r1", "alice", now),
                Ok(()),
                "{bad:?}"
            );
        }
        assert_eq!(
            tickets.check(None, &drop, &round, &user, now),
            Err(TicketError::Missing)
        );
    }
}
