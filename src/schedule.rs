//! When a drop is on sale: a weekly schedule or one fixed window, and the
//! round (one occurrence of the window) that is current or next at an instant.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use crate::domain::{DropId, RoundId};

/// One occurrence of a drop's window. Stock and limits are per round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// `<drop id>@<opening instant in UTC>`, unique and stable across restarts.
    pub id: RoundId,
    pub opens_at: Timestamp,
    pub closes_at: Timestamp,
}

/// Where a round stands at an instant (sold out is decided from stock, elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Upcoming,
    Open,
    Closed,
}

impl Round {
    fn new(drop: &DropId, opens_at: Timestamp, closes_at: Timestamp) -> Self {
        let stamp = opens_at.strftime("%Y%m%dT%H%M%SZ").to_string();
        Self {
            id: RoundId::new(drop, &stamp),
            opens_at,
            closes_at,
        }
    }

    pub fn phase_at(&self, now: Timestamp) -> Phase {
        phase(self.opens_at, self.closes_at, now)
    }
}

/// The window rule: open from `opens_at` (included) to `closes_at` (excluded).
pub fn phase(opens_at: Timestamp, closes_at: Timestamp, now: Timestamp) -> Phase {
    if now < opens_at {
        Phase::Upcoming
    } else if now < closes_at {
        Phase::Open
    } else {
        Phase::Closed
    }
}

/// A drop that opens on some weekdays at a local time, for a fixed duration.
/// Built only through [`WeeklySchedule::new`], so every schedule has a day
/// and a duration from a moment to a week: it always has a round within
/// the next eight days.
#[derive(Debug, Clone)]
pub struct WeeklySchedule {
    days: Vec<Weekday>,
    at: Time,
    time_zone: TimeZone,
    duration: SignedDuration,
}

/// Why a weekly schedule was refused, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("at least one day is needed")]
    NoDays,
    #[error("must be longer than zero and not exceed a week")]
    Duration,
}

impl ScheduleError {
    /// The schedule's field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::NoDays => "days",
            ScheduleError::Duration => "duration",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Timing {
    Weekly(WeeklySchedule),
    Window {
        opens_at: Timestamp,
        closes_at: Timestamp,
    },
}

impl Timing {
    /// The round that is open at `now`, else the next one to open; for a
    /// single window that has passed, that window (closed).
    pub fn round_at(&self, drop: &DropId, now: Timestamp) -> Round {
        match self {
            Timing::Window {
                opens_at,
                closes_at,
            } => Round::new(drop, *opens_at, *closes_at),
            Timing::Weekly(schedule) => schedule.round_at(drop, now),
        }
    }
}

impl WeeklySchedule {
    pub fn new(
        days: Vec<Weekday>,
        at: Time,
        time_zone: TimeZone,
        duration: SignedDuration,
    ) -> Result<Self, ScheduleError> {
        if days.is_empty() {
            return Err(ScheduleError::NoDays);
        }
        if duration <= SignedDuration::ZERO || duration > SignedDuration::from_hours(24 * 7) {
            return Err(ScheduleError::Duration);
        }
        Ok(Self {
            days,
            at,
            time_zone,
            duration,
        })
    }

    fn round_at(&self, drop: &DropId, now: Timestamp) -> Round {
        let today = now.to_zoned(self.time_zone.clone()).date();
        // A round that opened on an earlier day may still be open now, so the
        // search starts as many days back as the longest round can last.
        let days_back = self.duration.as_hours() / 24 + 1;
        for offset in -days_back..=8 {
            let Ok(date) = today.checked_add(offset.days()) else {
                continue;
            };
            if !self.days.contains(&date.weekday()) {
                continue;
            }
            // In a daylight-saving gap the local time does not exist; jiff's
            // compatible rule moves it forward, the way wall clocks do.
            let Ok(opening) = date.to_datetime(self.at).to_zoned(self.time_zone.clone()) else {
                continue;
            };
            let opens_at = opening.timestamp();
            let Ok(closes_at) = opens_at.checked_add(self.duration) else {
                continue;
            };
            // Openings grow with the date, so the first round still to close
            // is the current one if it has opened, else the next.
            if now < closes_at {
                return Round::new(drop, opens_at, closes_at);
            }
        }
        // Only at the end of representable time (a schedule always has a
        // day within eight): a round that has already closed, not a panic.
        Round::new(drop, now, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_id() -> DropId {
        DropId::parse("mi-15-ultra").unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn mon_wed_fri_10_shanghai() -> Timing {
        Timing::Weekly(
            WeeklySchedule::new(
                vec![Weekday::Monday, Weekday::Wednesday, Weekday::Friday],
                Time::constant(10, 0, 0, 0),
                TimeZone::get("Asia/Shanghai").unwrap(),
                SignedDuration::from_hours(2),
            )
            .unwrap(),
        )
    }

    #[test]
    fn mon_wed_fri_at_ten_shanghai_seen_from_utc() {
        let timing = mon_wed_fri_10_shanghai();
        // Friday 2026-11-27 01:00 UTC is 09:00 in Shanghai: Friday's round is next.
        let round = timing.round_at(&drop_id(), ts("2026-11-27T01:00:00Z"));
        assert_eq!(round.opens_at, ts("2026-11-27T02:00:00Z"));
        assert_eq!(round.closes_at, ts("2026-11-27T04:00:00Z"));
        assert_eq!(round.id.as_str(), "mi-15-ultra@20261127T020000Z");
        assert_eq!(round.phase_at(ts("2026-11-27T01:00:00Z")), Phase::Upcoming);

        // 10:30 Shanghai: the same round, open.
        let open = timing.round_at(&drop_id(), ts("2026-11-27T02:30:00Z"));
        assert_eq!(open, round);
        assert_eq!(open.phase_at(ts("2026-11-27T02:30:00Z")), Phase::Open);

        // Friday 12:00 Shanghai, the round has closed: next is Monday 30 Nov.
        let next = timing.round_at(&drop_id(), ts("2026-11-27T04:00:00Z"));
        assert_eq!(next.opens_at, ts("2026-11-30T02:00:00Z"));

        // Thursday 23:30 UTC is already Friday 07:30 in Shanghai.
        let early = timing.round_at(&drop_id(), ts("2026-11-26T23:30:00Z"));
        assert_eq!(early.opens_at, ts("2026-11-27T02:00:00Z"));
    }

    #[test]
    fn a_round_that_crosses_midnight_is_still_current_after_midnight() {
        let timing = Timing::Weekly(
            WeeklySchedule::new(
                vec![Weekday::Saturday],
                Time::constant(23, 0, 0, 0),
                TimeZone::get("Asia/Shanghai").unwrap(),
                SignedDuration::from_hours(3),
            )
            .unwrap(),
        );
        // Sunday 2026-11-29 01:00 Shanghai = Saturday 17:00 UTC.
        let round = timing.round_at(&drop_id(), ts("2026-11-28T17:00:00Z"));
        assert_eq!(round.opens_at, ts("2026-11-28T15:00:00Z"));
        assert_eq!(round.closes_at, ts("2026-11-28T18:00:00Z"));
        assert_eq!(round.phase_at(ts("2026-11-28T17:00:00Z")), Phase::Open);
        // After 02:00 Sunday it is over and next Saturday is next.
        let next = timing.round_at(&drop_id(), ts("2026-11-28T18:00:00Z"));
        assert_eq!(next.opens_at, ts("2026-12-05T15:00:00Z"));
    }

    #[test]
    fn daylight_saving_keeps_the_local_opening_time() {
        let timing = Timing::Weekly(
            WeeklySchedule::new(
                vec![Weekday::Sunday],
                Time::constant(10, 0, 0, 0),
                TimeZone::get("America/New_York").unwrap(),
                SignedDuration::from_hours(1),
            )
            .unwrap(),
        );
        // 2026-03-01 is EST (UTC-5), 2026-03-08 switches to EDT (UTC-4) at 02:00.
        let before = timing.round_at(&drop_id(), ts("2026-03-01T00:00:00Z"));
        assert_eq!(before.opens_at, ts("2026-03-01T15:00:00Z"));
        let after = timing.round_at(&drop_id(), ts("2026-03-02T00:00:00Z"));
        assert_eq!(after.opens_at, ts("2026-03-08T14:00:00Z"));
    }

    #[test]
    fn an_opening_inside_the_spring_forward_gap_moves_forward() {
        let timing = Timing::Weekly(
            WeeklySchedule::new(
                vec![Weekday::Sunday],
                Time::constant(2, 30, 0, 0),
                TimeZone::get("America/New_York").unwrap(),
                SignedDuration::from_hours(1),
            )
            .unwrap(),
        );
        // 02:30 does not exist on 2026-03-08; it becomes 03:30 EDT = 07:30 UTC.
        let round = timing.round_at(&drop_id(), ts("2026-03-07T12:00:00Z"));
        assert_eq!(round.opens_at, ts("2026-03-08T07:30:00Z"));
    }

    #[test]
    fn a_single_window_is_upcoming_open_then_closed() {
        let timing = Timing::Window {
            opens_at: ts("2026-11-30T02:00:00Z"),
            closes_at: ts("2026-11-30T04:00:00Z"),
        };
        let round = timing.round_at(&drop_id(), ts("2026-12-01T00:00:00Z"));
        assert_eq!(round.phase_at(ts("2026-11-30T01:59:59Z")), Phase::Upcoming);
        assert_eq!(round.phase_at(ts("2026-11-30T02:00:00Z")), Phase::Open);
        assert_eq!(round.phase_at(ts("2026-11-30T04:00:00Z")), Phase::Closed);
    }

    #[test]
    fn a_schedule_without_days_or_with_an_odd_duration_cannot_be_built() {
        let at = Time::constant(10, 0, 0, 0);
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        let hour = SignedDuration::from_hours(1);
        let no_days = WeeklySchedule::new(vec![], at, tz.clone(), hour);
        assert_eq!(no_days.unwrap_err(), ScheduleError::NoDays);
        for duration in [SignedDuration::ZERO, SignedDuration::from_hours(24 * 7 + 1)] {
            let odd = WeeklySchedule::new(vec![Weekday::Monday], at, tz.clone(), duration);
            assert_eq!(odd.unwrap_err(), ScheduleError::Duration);
        }
    }

    #[test]
    fn the_end_of_time_gives_a_closed_round_not_a_panic() {
        let schedule = mon_wed_fri_10_shanghai();
        let round = schedule.round_at(&drop_id(), Timestamp::MAX);
        assert_eq!(round.phase_at(Timestamp::MAX), Phase::Closed);
    }
}
