//! Token quotas (`[quotas]`): each user may use so many tokens (prompt and completion, as the
//! providers report them) per UTC calendar period, the configured default unless an admin set
//! the user's own. A reply is refused (429 `quota_exceeded`) before its provider is called once
//! the period's usage has reached the quota; a reply that runs past it finishes and is counted.
//!
//! The usage is read from the metadata store, where each reply's usage is added to its user's
//! day as it is recorded: every node of a cluster sees the same totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arbor_actors::model::UserId;
use arbor_actors::ports::{MetadataStore, QuotaGate, QuotaRefused, QuotaSetting, StoreError};
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
///
/// A server keeps what it last read of each user (their setting, and their usage this period)
/// for `settings_ttl`, and adds to it the usage of every reply it stores: a reply asks the
/// store nothing while that is fresh. So on one server the reply after the one that used the
/// quota up is refused exactly; replies another server stored count here once the entry is
/// read again, within `settings_ttl` (cluster mode: a user's chats can live on several).
pub struct Quotas {
    store: Arc<dyn MetadataStore>,
    /// Tokens per period for users without their own; `None`: no quota.
    default: Option<u64>,
    period: QuotaPeriod,
    known: moka::future::Cache<UserId, Arc<Known>>,
    /// Replies refused for a used-up quota.
    pub refused: IntCounter,
}

/// A user's setting and usage as last read, plus what this server stored since.
struct Known {
    setting: QuotaSetting,
    /// The first day of the period `used` counts.
    start: NaiveDate,
    used: AtomicU64,
}

impl Quotas {
    pub fn new(store: Arc<dyn MetadataStore>, default: Option<u64>, period: QuotaPeriod) -> Self {
        Self::with_settings_ttl(store, default, period, std::time::Duration::from_secs(2))
    }

    /// What a server read of a user is read again after `ttl`: how long an admin's change made
    /// on another server (or with `arbor quota`), or usage stored by another server, takes to
    /// count here.
    pub fn with_settings_ttl(
        store: Arc<dyn MetadataStore>,
        default: Option<u64>,
        period: QuotaPeriod,
        ttl: std::time::Duration,
    ) -> Self {
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
            known: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            refused,
        }
    }

    /// Forgets what was read of a user (their setting was just changed here).
    pub async fn forget(&self, user: UserId) {
        self.known.invalidate(&user).await;
    }

    /// The limit and its source a setting gives.
    fn limit(&self, setting: QuotaSetting) -> (Option<u64>, QuotaSource) {
        match setting {
            QuotaSetting::Default => (self.default, QuotaSource::Default),
            QuotaSetting::Unlimited => (None, QuotaSource::User),
            QuotaSetting::Tokens(n) => (Some(n), QuotaSource::User),
        }
    }

    /// Reads the user's setting and usage since `start` from the store, and keeps them.
    async fn read(&self, user: UserId, start: NaiveDate) -> Result<Arc<Known>, StoreError> {
        let (setting, used) = self.store.quota_usage(user, start).await?;
        let known = Arc::new(Known {
            setting,
            start,
            used: AtomicU64::new(used),
        });
        self.known.insert(user, known.clone()).await;
        Ok(known)
    }

    /// The user's limit, usage and period now, read from the store.
    pub async fn status(&self, user: UserId) -> Result<QuotaStatus, StoreError> {
        let (start, resets_at) = self.period.bounds(Utc::now().date_naive());
        let known = self.read(user, start).await?;
        let (limit, source) = self.limit(known.setting);
        Ok(QuotaStatus {
            limit,
            source,
            period: self.period,
            used: known.used.load(Ordering::Relaxed),
            period_start: start,
            resets_at,
        })
    }
}

#[async_trait]
impl QuotaGate for Quotas {
    async fn check(&self, user: UserId) -> Result<(), QuotaRefused> {
        let (start, resets_at) = self.period.bounds(Utc::now().date_naive());
        let known = match self.known.get(&user).await {
            Some(known) if known.start == start => known,
            _ => self.read(user, start).await.map_err(|error| {
                tracing::warn!(%error, "reading a user's quota failed");
                QuotaRefused::Unavailable
            })?,
        };
        let used = known.used.load(Ordering::Relaxed);
        match self.limit(known.setting).0 {
            Some(limit) if used >= limit => {
                self.refused.inc();
                Err(QuotaRefused::Exceeded {
                    limit,
                    used,
                    resets_at,
                })
            }
            _ => Ok(()),
        }
    }

    async fn spent(&self, user: UserId, tokens: u64) {
        if let Some(known) = self.known.get(&user).await {
            known.used.fetch_add(tokens, Ordering::Relaxed);
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
