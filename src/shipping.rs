//! Dates the shopper is promised, counted in the drop's time zone: when a
//! paid order is expected to ship, and until when a delivered one may be
//! returned (7 days without a reason, 15 for a quality problem, counted
//! from the day after delivery, whole calendar days).

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// Days after delivery a return needs no reason.
pub const NO_REASON_DAYS: i64 = 7;
/// Days after delivery a quality problem may be returned or exchanged;
/// after them the order is complete.
pub const QUALITY_DAYS: i64 = 15;
/// Working days self-operated goods ship within, unless the drop says.
pub const DEFAULT_SHIP_WITHIN_DAYS: u32 = 3;

/// How a drop promises shipping.
#[derive(Debug, Clone, PartialEq)]
pub struct ShipPlan {
    /// A fixed date (a presale ships on its date).
    pub date: Option<Date>,
    /// Otherwise: working days (Monday to Friday) after payment.
    pub within_days: u32,
    /// Where days are counted.
    pub time_zone: TimeZone,
}

impl Default for ShipPlan {
    fn default() -> Self {
        Self {
            date: None,
            within_days: DEFAULT_SHIP_WITHIN_DAYS,
            time_zone: default_time_zone(),
        }
    }
}

/// The store's own zone, for drops that name none (Asia/Shanghai is in the
/// bundled time-zone database, so this never falls back).
pub fn default_time_zone() -> TimeZone {
    TimeZone::get("Asia/Shanghai").unwrap_or(TimeZone::UTC)
}

impl ShipPlan {
    /// The date an order paid at `paid_at` is expected to ship: the fixed
    /// date, or `within_days` working days after the day of payment (from
    /// `not_before` when that is later: a presale's balance window).
    pub fn estimate(&self, paid_at: Timestamp, not_before: Option<Timestamp>) -> Date {
        if let Some(date) = self.date {
            return date;
        }
        let from = not_before.map_or(paid_at, |t| t.max(paid_at));
        let mut day = from.to_zoned(self.time_zone.clone()).date();
        let mut left = self.within_days;
        while left > 0 {
            day = day.tomorrow().unwrap_or(day);
            if !matches!(day.weekday(), Weekday::Saturday | Weekday::Sunday) {
                left -= 1;
            }
        }
        day
    }

    /// The return windows of an order delivered at `delivered_at`: returns
    /// without a reason are taken before the first instant, quality returns
    /// before the second, when the order completes.
    pub fn return_windows(&self, delivered_at: Timestamp) -> (Timestamp, Timestamp) {
        let delivered_on = delivered_at.to_zoned(self.time_zone.clone()).date();
        (
            self.start_of(delivered_on, NO_REASON_DAYS + 1),
            self.start_of(delivered_on, QUALITY_DAYS + 1),
        )
    }

    /// The first instant of the day `days` after `date`, in the zone.
    fn start_of(&self, date: Date, days: i64) -> Timestamp {
        let day = date.checked_add(days.days()).unwrap_or(date);
        day.to_zoned(self.time_zone.clone())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn shanghai(raw: &str) -> Timestamp {
        format!("{raw}+08:00").parse().unwrap()
    }

    #[test]
    fn shipping_counts_working_days_from_the_day_of_payment() {
        let plan = ShipPlan::default();
        // Friday 2026-12-04 → Mon, Tue, Wed.
        let friday = shanghai("2026-12-04T23:30:00");
        assert_eq!(plan.estimate(friday, None), date(2026, 12, 9));
        // 23:30 on Friday in UTC is already Saturday in Shanghai.
        let saturday: Timestamp = "2026-12-04T16:30:00Z".parse().unwrap();
        assert_eq!(plan.estimate(saturday, None), date(2026, 12, 9));
        let monday = shanghai("2026-12-07T09:00:00");
        assert_eq!(plan.estimate(monday, None), date(2026, 12, 10));
    }

    #[test]
    fn a_presale_ships_on_its_date_or_after_its_balance_window_opens() {
        let fixed = ShipPlan {
            date: Some(date(2026, 12, 15)),
            ..ShipPlan::default()
        };
        assert_eq!(
            fixed.estimate(shanghai("2026-12-01T10:00:00"), None),
            date(2026, 12, 15)
        );
        let counted = ShipPlan::default();
        let paid = shanghai("2026-12-01T10:00:00");
        let balance_from = shanghai("2026-12-10T10:00:00");
        assert_eq!(
            counted.estimate(paid, Some(balance_from)),
            date(2026, 12, 15)
        );
    }

    #[test]
    fn return_windows_are_whole_days_after_the_day_of_delivery() {
        let plan = ShipPlan::default();
        for delivered in ["2026-12-01T00:01:00", "2026-12-01T23:59:00"] {
            let (no_reason, quality) = plan.return_windows(shanghai(delivered));
            assert_eq!(no_reason, shanghai("2026-12-09T00:00:00"), "{delivered}");
            assert_eq!(quality, shanghai("2026-12-17T00:00:00"), "{delivered}");
        }
    }
}
