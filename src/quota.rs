//! Token quotas (`[quotas]`): each user may use so many tokens (prompt and completion, as the
//! providers report them) per UTC calendar period, the configured default unless an admin set
//! the user's own. A reply is refused (429 `quota_exceeded`) before its provider is called once
//! the period's usage has reached the quota; a reply that runs past it finishes and is counted.
//!
//! The usage is read from the metadata store, where each reply's usage is added to its user's
//! day as it is recorded: every node of a cluster sees the same totals.

use std::sync::Arc;

use arbor_actors::model::UserId;
use arbor_actors::ports::{MetadataStore, QuotaGate, QuotaRefused, QuotaSetting};
use async_trait::async_trait;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The calendar period a quota counts over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    Day,
    /// From Monday.
    Week,
    #[default]
    Month,
}

impl QuotaPeriod {
    /// The first day of the period holding `day`, and the start of the next one.
    pub fn bounds(self, day: NaiveDate) -> (NaiveDate, DateTime<Utc>) {
        let start = match self {
            QuotaPeriod::Day => day,
            QuotaPeriod::Week => {
                day - Duration::days(i64::from(day.weekday().num_days_from_monday()))
            }
            QuotaPeriod::Month => day.with_day(1).unwrap_or(day),
        };
        let next = match self {
            QuotaPeriod::Day => start + Duration::days(1),
            QuotaPeriod::Week => start + Duration::days(7),
            QuotaPeriod::Month => start
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(start + Duration::days(31)),
        };
        (start, next.and_time(chrono::NaiveTime::MIN).and_utc())
    }
}

/// A user's quota as it stands now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuotaStatus {
    /// Tokens a period; `null`: no quota.
    pub limit: Option<u64>,
    /// Whether the limit is the user's own (set by an admin) or the configured default.
    pub source: QuotaSource,
    pub period: QuotaPeriod,
    /// Tokens used since `period_start`.
    pub used: u64,
    pub period_start: NaiveDate,
    pub resets_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QuotaSource {
    Default,
    User,
}

/// The quota policy, over the metadata store.
pub struct Quotas {
    store: Arc<dyn MetadataStore>,
    /// Tokens per period for users without their own; `None`: no quota.
    default: Option<u64>,
    period: QuotaPeriod,
    /// Replies refused for a used-up quota.
    pub refused: IntCounter,
}

impl Quotas {
    pub fn new(store: Arc<dyn MetadataStore>, default: Option<u64>, period: QuotaPeriod) -> Self {
        #[allow(clippy::expect_used)] // A static, valid name and help text.
        let refused = IntCounter::new(
            "arbor_quota_refusals_total",
            "Replies refused because their user's token quota for the period was used up.",
        )
        .expect("valid counter");
        Self {
            store,
            default,
            period,
            refused,
        }
    }

    /// The user's limit, usage and period now.
    pub async fn status(
        &self,
        user: UserId,
    ) -> Result<QuotaStatus, arbor_actors::ports::StoreError> {
        let (start, resets_at) = self.period.bounds(Utc::now().date_naive());
        let (setting, used) = self.store.quota_usage(user, start).await?;
        let (limit, source) = match setting {
            QuotaSetting::Default => (self.default, QuotaSource::Default),
            QuotaSetting::Unlimited => (None, QuotaSource::User),
            QuotaSetting::Tokens(n) => (Some(n), QuotaSource::User),
        };
        Ok(QuotaStatus {
            limit,
            source,
            period: self.period,
            used,
            period_start: start,
            resets_at,
        })
    }
}

#[async_trait]
impl QuotaGate for Quotas {
    async fn check(&self, user: UserId) -> Result<(), QuotaRefused> {
        let status = self.status(user).await.map_err(|error| {
            tracing::warn!(%error, "reading a user's quota failed");
            QuotaRefused::Unavailable
        })?;
        match status.limit {
            Some(limit) if status.used >= limit => {
                self.refused.inc();
                Err(QuotaRefused::Exceeded {
                    limit,
                    used: status.used,
                    resets_at: status.resets_at,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn periods_start_and_end_on_calendar_bounds() {
        let wed = day("2026-12-09");
        let (start, next) = QuotaPeriod::Day.bounds(wed);
        assert_eq!(
            (start, next.to_rfc3339()),
            (wed, "2026-12-10T00:00:00+00:00".into())
        );
        let (start, next) = QuotaPeriod::Week.bounds(wed);
        assert_eq!(start, day("2026-12-07"), "weeks start on Monday");
        assert_eq!(next.date_naive(), day("2026-12-14"));
        let (start, next) = QuotaPeriod::Month.bounds(day("2026-12-31"));
        assert_eq!(
            (start, next.date_naive()),
            (day("2026-12-01"), day("2027-01-01"))
        );
        let (start, next) = QuotaPeriod::Month.bounds(day("2028-02-29"));
        assert_eq!(
            (start, next.date_naive()),
            (day("2028-02-01"), day("2028-03-01"))
        );
    }
}
