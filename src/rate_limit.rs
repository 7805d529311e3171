//! Fair use: per-user request limits by route class, per-client-IP limits on sign-up and login,
//! failed-login limits, and the per-user bound on replies (`[rate_limits]`).
//!
//! Request rates are GCRA buckets (`governor`): a class allows `N` requests a minute, `N` of
//! them at once after a quiet minute, then one every `60/N` s. A refusal is 429 `rate_limited`
//! with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers), e.g. `"writes";q=1200;w=60` and `"writes";r=0;t=3`.
//!
//! - reads (GET, HEAD) and writes (everything else) of an authenticated user: checked where the
//!   caller is authenticated (`auth::AuthUser`), so every route counts;
//! - replies: each request that starts a model reply, and how many may run at once
//!   (`arbor_actors::ports::ReplyGate`, held until the model call ends);
//! - auth: sign-up, login and token requests per client IP;
//! - failed logins: per client IP (any account) and per account from one IP, in a fixed window.
//!   An account is never locked for everyone: a flood from one address locks that address out,
//!   not the account's owner elsewhere (README, "Fair use").
//!
//! The client IP is the connection's peer, or, when the peer is one of `trusted_proxies`, the
//! nearest address in `client_ip_header` (X-Forwarded-For) that is not a trusted proxy.
//! Every limiter forgets keys idle for a window and holds at most `max_tracked` of them; state
//! is per node (README, "Running several nodes").

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::header::HeaderName;
use actix_web::{web, FromRequest, HttpRequest};
use arbor_actors::model::UserId;
use arbor_actors::ports::{ReplyGate, ReplyPass, ReplyRefused};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use prometheus::{IntCounterVec, Opts};

use crate::config::RateLimitSettings;
use crate::error::ApiError;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Reads,
    Writes,
    Replies,
    Imports,
    Auth,
    FailedLogins,
    ConcurrentReplies,
    ShareMisses,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reads => "reads",
            Self::Writes => "writes",
            Self::Replies => "replies",
            Self::Imports => "imports",
            Self::Auth => "auth",
            Self::FailedLogins => "failed_logins",
            Self::ConcurrentReplies => "concurrent_replies",
            Self::ShareMisses => "share_misses",
        }
    }
}

type Keyed<K> = RateLimiter<K, DashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One class's bucket per key.
struct Limiter<K: std::hash::Hash + Eq + Clone> {
    class: Class,
    per_minute: u32,
    quota: Quota,
    /// Replaced by a fresh one when more keys than the bound are recent at once.
    keyed: std::sync::RwLock<Keyed<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    fn new(class: Class, per_minute: u32) -> Option<Self> {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
        Some(Self {
            class,
            per_minute,
            quota,
            keyed: std::sync::RwLock::new(Self::fresh(quota)),
        })
    }

    fn fresh(quota: Quota) -> Keyed<K> {
        RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>()
    }

    fn keyed(&self) -> std::sync::RwLockReadGuard<'_, Keyed<K>> {
        self.keyed.read().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, key: &K, refused: &IntCounterVec) -> Result<(), ApiError> {
        let checked = self.keyed().check_key(key);
        match checked {
            Ok(_) => Ok(()),
            Err(not_until) => {
                refused.with_label_values(&[self.class.name()]).inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(refusal(self.class, self.per_minute, 60, wait))
            }
        }
    }

    fn sweep(&self, max: usize) {
        let over = {
            let keyed = self.keyed();
            keyed.retain_recent();
            keyed.shrink_to_fit();
            keyed.len() > max
        };
        if over {
            // Over the bound even after forgetting idle keys: start afresh rather than grow.
            *self.keyed.write().unwrap_or_else(|e| e.into_inner()) = Self::fresh(self.quota);
        }
    }

    fn len(&self) -> usize {
        self.keyed().len()
    }
}

/// A 429 `rate_limited` for `class`.
fn refusal(class: Class, limit: u32, window_secs: u32, wait: Duration) -> ApiError {
    ApiError::over_limit(class.name(), limit, window_secs, wait)
}

/// Failures in a fixed window, per key, bounded.
struct Failures<K> {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<K, (Instant, u32)>>,
    bound: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Failures<K> {
    fn new(max: u32, window: Duration, bound: usize) -> Option<Self> {
        (max > 0).then(|| Self {
            max,
            window,
            map: Mutex::new(HashMap::new()),
            bound,
        })
    }

    /// How long `key` must wait, if it has used up its failures.
    fn blocked(&self, key: &K) -> Option<Duration> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let (since, count) = map.get(key)?;
        let left = self.window.checked_sub(since.elapsed())?;
        (*count >= self.max).then_some(left)
    }

    fn failed(&self, key: K) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.bound {
            let window = self.window;
            map.retain(|_, (since, _)| since.elapsed() < window);
            if map.len() >= self.bound {
                map.clear();
            }
        }
        let entry = map.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
    }

    fn forget(&self, key: &K) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn sweep(&self) {
        let window = self.window;
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (since, _)| since.elapsed() < window);
    }
}

/// Every limit of one server.
pub struct RateLimits {
    reads: Option<Limiter<UserId>>,
    writes: Option<Limiter<UserId>>,
    replies: Option<Limiter<UserId>>,
    imports: Option<Limiter<UserId>>,
    auth: Option<Limiter<IpAddr>>,
    failed_by_ip: Option<Failures<IpAddr>>,
    failed_by_account: Option<Failures<(String, IpAddr)>>,
    share_misses: Option<Failures<IpAddr>>,
    concurrent: u32,
    running: Arc<Mutex<HashMap<UserId, u32>>>,
    trusted_proxies: Vec<IpAddr>,
    client_ip_header: Option<HeaderName>,
    max_tracked: usize,
    refusal_delay: Duration,
    /// `arbor_rate_limited_total{class}`.
    pub refused: IntCounterVec,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> anyhow::Result<Arc<Self>> {
        let window = Duration::from_secs(settings.failure_window_secs.max(1));
        let bound = settings.max_tracked.max(1);
        let refused = IntCounterVec::new(
            Opts::new(
                "arbor_rate_limited_total",
                "Requests refused with 429 rate_limited, by class: reads, writes, replies, imports, auth (per client IP), failed_logins, concurrent_replies, share_misses.",
            ),
            &["class"],
        )?;
        for class in [
            Class::Reads,
            Class::Writes,
            Class::Replies,
            Class::Imports,
            Class::Auth,
            Class::FailedLogins,
            Class::ConcurrentReplies,
            Class::ShareMisses,
        ] {
            refused.with_label_values(&[class.name()]);
        }
        let header = settings.client_ip_header.trim();
        Ok(Arc::new(Self {
            reads: Limiter::new(Class::Reads, settings.reads_per_minute),
            writes: Limiter::new(Class::Writes, settings.writes_per_minute),
            replies: Limiter::new(Class::Replies, settings.replies_per_minute),
            imports: Limiter::new(Class::Imports, settings.imports_per_minute),
            auth: Limiter::new(Class::Auth, settings.auth_per_minute),
            failed_by_ip: Failures::new(settings.failed_logins_per_ip, window, bound),
            failed_by_account: Failures::new(settings.failed_logins_per_account, window, bound),
            share_misses: Failures::new(settings.share_misses_per_ip, window, bound),
            concurrent: settings.concurrent_replies,
            running: Arc::default(),
            trusted_proxies: settings.trusted_proxies.clone(),
            client_ip_header: match header {
                "" => None,
                name => Some(HeaderName::from_bytes(
                    name.to_ascii_lowercase().as_bytes(),
                )?),
            },
            max_tracked: bound,
            refusal_delay: Duration::from_millis(settings.refusal_delay_ms),
            refused,
        }))
    }

    /// An authenticated request of `user`: a read (GET, HEAD) or a write.
    pub fn check_request(&self, user: UserId, read: bool) -> Result<(), ApiError> {
        let limiter = if read { &self.reads } else { &self.writes };
        match limiter {
            Some(limiter) => limiter.check(&user, &self.refused),
            None => Ok(()),
        }
    }

    /// An import (of a chat, another product's export, or a backup) by `user`.
    pub fn check_import(&self, user: UserId) -> Result<(), ApiError> {
        match &self.imports {
            Some(limiter) => limiter.check(&user, &self.refused),
            None => Ok(()),
        }
    }

    /// A sign-up, login or token request from `ip`.
    pub fn check_auth(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.auth {
            Some(limiter) => limiter.check(&ip, &self.refused),
            None => Ok(()),
        }
    }

    /// Before a password is checked: refused while `ip`, or `login` from `ip`, has used up its
    /// failed logins.
    pub fn check_login(&self, ip: IpAddr, login: &str) -> Result<(), ApiError> {
        let by_ip = self.failed_by_ip.as_ref().and_then(|f| f.blocked(&ip));
        let by_account = self
            .failed_by_account
            .as_ref()
            .and_then(|f| f.blocked(&(login.to_lowercase(), ip)));
        // Report the limit that refused: the address's, or the account's from this address.
        let limit = |max: u32, window: Duration| (max, window.as_secs());
        let (wait, (max, window)) = match (
            by_ip,
            by_account,
            &self.failed_by_ip,
            &self.failed_by_account,
        ) {
            (Some(wait), _, Some(f), _) => (wait, limit(f.max, f.window)),
            (None, Some(wait), _, Some(f)) => (wait, limit(f.max, f.window)),
            _ => return Ok(()),
        };
        self.refused
            .with_label_values(&[Class::FailedLogins.name()])
            .inc();
        Err(refusal(
            Class::FailedLogins,
            max,
            u32::try_from(window).unwrap_or(u32::MAX),
            wait,
        ))
    }

    /// Before a share link is looked up: refused while `ip` has used up its misses.
    pub fn check_share(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(misses) = &self.share_misses else {
            return Ok(());
        };
        let Some(wait) = misses.blocked(&ip) else {
            return Ok(());
        };
        self.refused
            .with_label_values(&[Class::ShareMisses.name()])
            .inc();
        let window = u32::try_from(misses.window.as_secs()).unwrap_or(u32::MAX);
        Err(refusal(Class::ShareMisses, misses.max, window, wait))
    }

    /// A share link lookup from `ip` found nothing.
    pub fn share_missed(&self, ip: IpAddr) {
        if let Some(misses) = &self.share_misses {
            misses.failed(ip);
        }
    }

    /// A login from `ip` as `login` failed (or, `ok`, succeeded: that account's count from this
    /// address starts again).
    pub fn login_outcome(&self, ip: IpAddr, login: &str, ok: bool) {
        let key = (login.to_lowercase(), ip);
        if ok {
            if let Some(f) = &self.failed_by_account {
                f.forget(&key);
            }
            return;
        }
        if let Some(f) = &self.failed_by_ip {
            f.failed(ip);
        }
        if let Some(f) = &self.failed_by_account {
            f.failed(key);
        }
    }

    /// The client's address: the peer, or behind a trusted proxy the nearest untrusted address
    /// the proxies recorded.
    pub fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
        let Some(header) = &self.client_ip_header else {
            return peer;
        };
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = req
            .headers()
            .get_all(header)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|a| !self.trusted_proxies.contains(a))
            .unwrap_or(peer)
    }

    /// Forgets idle keys and holds each limiter within `max_tracked`; run periodically.
    pub fn sweep(&self) {
        for limiter in [&self.reads, &self.writes, &self.replies, &self.imports]
            .into_iter()
            .flatten()
        {
            limiter.sweep(self.max_tracked);
        }
        if let Some(auth) = &self.auth {
            auth.sweep(self.max_tracked);
        }
        if let Some(f) = &self.failed_by_ip {
            f.sweep();
        }
        if let Some(f) = &self.failed_by_account {
            f.sweep();
        }
        if let Some(f) = &self.share_misses {
            f.sweep();
        }
    }

    /// Keys tracked now, all limiters together (for tests and operators).
    pub fn tracked(&self) -> usize {
        let users: usize = [&self.reads, &self.writes, &self.replies, &self.imports]
            .into_iter()
            .flatten()
            .map(Limiter::len)
            .sum();
        users + self.auth.as_ref().map_or(0, Limiter::len)
    }

    /// Runs `sweep` every `every` on the current runtime, as long as the limits live.
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) {
        let limits = Arc::downgrade(self);
        actix_web::rt::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(limits) = limits.upgrade() else {
                    break;
                };
                limits.sweep();
            }
        });
    }
}

/// A user's place among their running replies.
struct Running {
    user: UserId,
    running: Arc<Mutex<HashMap<UserId, u32>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = running.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.user);
            }
        }
    }
}

impl ReplyGate for RateLimits {
    /// Checks how many of the user's replies run first, so a refusal for that costs no place
    /// in the rate.
    fn admit(&self, user: UserId) -> Result<ReplyPass, ReplyRefused> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if self.concurrent > 0 && running.get(&user).copied().unwrap_or(0) >= self.concurrent {
            self.refused
                .with_label_values(&[Class::ConcurrentReplies.name()])
                .inc();
            return Err(ReplyRefused {
                class: Class::ConcurrentReplies.name(),
                limit: self.concurrent,
                window_secs: 0,
                retry_after_ms: 1000,
            });
        }
        if let Some(replies) = &self.replies {
            let checked = replies.keyed().check_key(&user);
            if let Err(not_until) = checked {
                self.refused
                    .with_label_values(&[Class::Replies.name()])
                    .inc();
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(ReplyRefused {
                    class: Class::Replies.name(),
                    limit: replies.per_minute,
                    window_secs: 60,
                    retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                });
            }
        }
        if self.concurrent == 0 {
            return Ok(Box::new(()));
        }
        *running.entry(user).or_insert(0) += 1;
        Ok(Box::new(Running {
            user,
            running: self.running.clone(),
        }))
    }
}

/// A sign-up, login or token request: the client's address, admitted by its per-IP limit
/// (extracted first, so a refusal costs no body parsing and no password hashing). Refusals are
/// answered after `refusal_delay_ms`: a flooding client waits on a timer, and a closed-loop
/// flood of `C` connections costs `C` cheap answers a second.
pub struct AuthAttempt {
    pub ip: IpAddr,
    pub limits: Option<Arc<RateLimits>>,
}

impl AuthAttempt {
    /// `result`, answered after the refusal delay when it is a refusal (429, 503 `auth_busy`).
    pub async fn slowly<T>(&self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        if let (Err(error), Some(limits)) = (&result, &self.limits) {
            if is_refusal(error) && !limits.refusal_delay.is_zero() {
                tokio::time::sleep(limits.refusal_delay).await;
            }
        }
        result
    }
}

fn is_refusal(error: &ApiError) -> bool {
    matches!(error.code(), "rate_limited" | "auth_busy")
}

impl FromRequest for AuthAttempt {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let limits = req
            .app_data::<web::Data<RateLimits>>()
            .map(|l| l.clone().into_inner());
        let ip = limits.as_ref().map_or_else(
            || {
                req.peer_addr()
                    .map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip())
            },
            |l| l.client_ip(req),
        );
        let admitted = match &limits {
            Some(l) => l.check_auth(ip),
            None => Ok(()),
        };
        let attempt = Self { ip, limits };
        Box::pin(async move {
            match admitted {
                Ok(()) => Ok(attempt),
                Err(error) => attempt.slowly(Err(error)).await,
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// How many of `tries` requests in a row the limit admits.
    fn admitted(limits: &RateLimits, user: UserId, read: bool, tries: u32) -> u32 {
        (0..tries)
            .filter(|_| limits.check_request(user, read).is_ok())
            .count() as u32
    }

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            reads_per_minute: 0,
            writes_per_minute: 5,
            replies_per_minute: 2,
            imports_per_minute: 0,
            auth_per_minute: 3,
            concurrent_replies: 1,
            failed_logins_per_ip: 4,
            failed_logins_per_account: 2,
            share_misses_per_ip: 3,
            failure_window_secs: 60,
            client_ip_header: "x-forwarded-for".into(),
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
            max_tracked: 3,
            refusal_delay_ms: 0,
        }
    }

    #[test]
    fn a_class_admits_its_quota_and_no_more() {
        let limits = RateLimits::new(&settings()).unwrap();
        let (a, b) = (UserId::new(), UserId::new());
        assert_eq!(admitted(&limits, a, false, 20), 5, "writes: 5 a minute");
        assert_eq!(
            admitted(&limits, b, false, 20),
            5,
            "each user has their own"
        );
        assert_eq!(admitted(&limits, a, true, 50), 50, "reads are off");
        let refused = limits.check_request(a, false).unwrap_err();
        assert_eq!(refused.code(), "rate_limited");
        assert_eq!(limits.refused.with_label_values(&["writes"]).get(), 31);
    }

    #[test]
    fn failed_logins_lock_out_the_address_not_the_account() {
        let limits = RateLimits::new(&settings()).unwrap();
        let (attacker, owner): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.7".parse().unwrap(),
        );
        for _ in 0..2 {
            assert!(limits.check_login(attacker, "Alice@example.com").is_ok());
            limits.login_outcome(attacker, "alice@example.com", false);
        }
        // The account is locked from the attacker's address, for any spelling...
        assert!(limits.check_login(attacker, "ALICE@example.com").is_err());
        // ... but not for its owner elsewhere, and the attacker may still try other accounts
        // until the address's own budget is spent.
        assert!(limits.check_login(owner, "alice@example.com").is_ok());
        for _ in 0..2 {
            assert!(limits.check_login(attacker, "bob@example.com").is_ok());
            limits.login_outcome(attacker, "bob@example.com", false);
        }
        assert!(limits.check_login(attacker, "carol@example.com").is_err());
    }

    #[test]
    fn replies_are_limited_in_rate_and_at_once() {
        let limits = RateLimits::new(&settings()).unwrap();
        let user = UserId::new();
        let first = limits.admit(user).unwrap();
        assert!(matches!(
            limits.admit(user),
            Err(ReplyRefused {
                class: "concurrent_replies",
                ..
            })
        ));
        drop(first);
        let _second = limits.admit(user).unwrap();
        drop(_second);
        assert!(matches!(
            limits.admit(user),
            Err(ReplyRefused {
                class: "replies",
                ..
            })
        ));
    }

    #[test]
    fn state_stays_within_its_bound() {
        let limits = RateLimits::new(&settings()).unwrap();
        for _ in 0..10 {
            limits.check_request(UserId::new(), false).ok();
        }
        assert_eq!(limits.tracked(), 10);
        limits.sweep();
        assert!(limits.tracked() <= 3, "{}", limits.tracked());
    }
}
