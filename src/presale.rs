//! Presale terms: a deposit at the win, the balance in a window later, and
//! the deposit kept (the order forfeited, its units back on sale) when the
//! balance is not paid by the window's end.
//!
//! A one-window drop names the balance window by instants; a weekly drop
//! sells a round every few days, so its window is counted from each
//! round's opening (`balance_from = "48h"`).

use jiff::{SignedDuration, Timestamp};

/// One end of the balance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    At(Timestamp),
    AfterOpening(SignedDuration),
}

impl Moment {
    /// An RFC 3339 instant, or a duration after the round's opening ("48h").
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Ok(at) = raw.parse::<Timestamp>() {
            return Ok(Moment::At(at));
        }
        match raw.parse::<SignedDuration>() {
            Ok(after) if after > SignedDuration::ZERO => Ok(Moment::AfterOpening(after)),
            _ => Err(format!(
                "{raw:?} is neither an RFC 3339 time like \"2026-12-10T10:00:00+08:00\" \
                 nor a duration after the round's opening like \"48h\""
            )),
        }
    }

    fn for_round(self, opens_at: Timestamp) -> Timestamp {
        match self {
            Moment::At(at) => at,
            Moment::AfterOpening(after) => opens_at.saturating_add(after).unwrap_or(opens_at),
        }
    }
}

/// When a presale's balance is paid: from `from` until (before) `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceWindow {
    pub from: Moment,
    pub until: Moment,
}

impl BalanceWindow {
    /// Both ends of one kind, the end after the start.
    pub fn parse(from: &str, until: &str) -> Result<Self, String> {
        let window = BalanceWindow {
            from: Moment::parse(from)?,
            until: Moment::parse(until)?,
        };
        let ordered = match (window.from, window.until) {
            (Moment::At(from), Moment::At(until)) => until > from,
            (Moment::AfterOpening(from), Moment::AfterOpening(until)) => until > from,
            _ => {
                return Err(
                    "give both ends as instants or both as durations after the opening".into(),
                )
            }
        };
        if !ordered {
            return Err("balance_until must be after balance_from".into());
        }
        Ok(window)
    }

    /// The window of the round that opens at `opens_at`.
    pub fn for_round(&self, opens_at: Timestamp) -> (Timestamp, Timestamp) {
        (
            self.from.for_round(opens_at),
            self.until.for_round(opens_at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_instants_or_durations_after_the_opening() {
        let opens: Timestamp = "2026-12-07T02:00:00Z".parse().unwrap();
        let fixed =
            BalanceWindow::parse("2026-12-10T10:00:00+08:00", "2026-12-12T23:59:59+08:00").unwrap();
        assert_eq!(
            fixed.for_round(opens),
            (
                "2026-12-10T02:00:00Z".parse().unwrap(),
                "2026-12-12T15:59:59Z".parse().unwrap()
            )
        );
        let weekly = BalanceWindow::parse("48h", "96h").unwrap();
        assert_eq!(
            weekly.for_round(opens),
            (
                "2026-12-09T02:00:00Z".parse().unwrap(),
                "2026-12-11T02:00:00Z".parse().unwrap()
            )
        );
    }

    #[test]
    fn mixed_reversed_or_malformed_windows_are_refused() {
        for (from, until) in [
            ("48h", "2026-12-12T23:59:59+08:00"),
            ("96h", "48h"),
            ("2026-12-12T00:00:00Z", "2026-12-12T00:00:00Z"),
            ("soon", "96h"),
            ("-5h", "96h"),
        ] {
            assert!(BalanceWindow::parse(from, until).is_err(), "{from} {until}");
        }
    }
}
