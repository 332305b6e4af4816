//! The admin view of the throttle (`nginx-auth-fcgi throttle show` and
//! `throttle unblock`): what is held about a client and a user, and lifting
//! blocks together with the counts behind them.

use std::net::IpAddr;

use super::keys::{self, Moment};
use super::{Scope, Throttle};
use crate::audit::quoted;

/// Whose pair blocks to find: the users blocked on a network, or the
/// networks a user is blocked on.
enum Partners<'a> {
    UsersOf(&'a str),
    NetsOf(&'a str),
}

impl Throttle {
    /// The other half of every pair block `of` asks for: this instance's,
    /// and with Redis those its index sets list.
    async fn partners(&self, of: Partners<'_>) -> Vec<String> {
        let pairs = self.local.pair_blocks().into_iter();
        let (index, mut found): (String, Vec<String>) = match of {
            Partners::UsersOf(net) => (
                format!("idx-net:{net}"),
                pairs.filter(|(n, _)| n == net).map(|(_, u)| u).collect(),
            ),
            Partners::NetsOf(user) => (
                format!("idx-user:{user}"),
                pairs.filter(|(_, u)| u == user).map(|(n, _)| n).collect(),
            ),
        };
        if let Some(r) = self.redis() {
            found.extend(r.members(&index).await.unwrap_or_default());
        }
        found.sort();
        found.dedup();
        found
    }
}

/// One counter as `throttle show` reports it.
fn counted(n: u32, limit: u32) -> String {
    if limit == 0 {
        format!("{n} (delays only)")
    } else {
        format!("{n} of {limit}")
    }
}

impl Throttle {
    /// What the throttle holds about `ip` and `user` (either may be
    /// missing), and what the next login from there would meet and why:
    /// the text of `nginx-auth-fcgi throttle show`.
    pub async fn inspect(&self, ip: Option<IpAddr>, user: Option<&[u8]>) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let Some(k) = self.keys(ip, user.unwrap_or_default()) else {
            let _ = writeln!(
                out,
                "client {}: in trusted_networks, never counted, delayed or blocked",
                ip.map_or("-".into(), |i| i.to_string())
            );
            return out;
        };
        let at = self.moment();
        let (now, bucket) = (at.now, at.bucket);
        let weigh = |c| at.weigh(c);
        let users_ok = self.users_ok(&k, &at).await;
        let threshold = self.policy.ip_threshold(users_ok);
        let _ = writeln!(
            out,
            "window {} s; block {} s",
            self.policy.window.as_secs(),
            self.policy.block_time.as_secs()
        );
        let mut blocked = None;
        if let Some(net) = &k.net {
            let n = weigh(self.peek(k.ip.as_deref().unwrap_or_default(), bucket).await);
            let _ = writeln!(
                out,
                "network {net}: {} failures; {users_ok} users logged in from it \
                 (threshold {} + {} x log2(1 + {users_ok}) = {threshold}, at most {})",
                counted(n, threshold),
                self.policy.block_ip,
                self.policy.success_bonus,
                self.policy.block_ip_max.max(self.policy.block_ip)
            );
        }
        let mut blocks = k.blocks();
        if user.is_none() {
            blocks.retain(|(scope, _)| *scope == Scope::Ip);
        }
        let names: Vec<&str> = blocks.iter().map(|(_, n)| n.as_str()).collect();
        let mut untils = self.local.get_blocks(&names);
        if let Some(r) = self.redis() {
            if let Ok(remote) = r.get_blocks(&names).await {
                untils = untils
                    .into_iter()
                    .zip(remote)
                    .map(|(l, r)| l.max(r))
                    .collect();
            }
        }
        if user.is_some() {
            let known = self.is_known(&k).await;
            if let Some(iu) = &k.ip_user {
                let n = weigh(self.peek(iu, bucket).await);
                let _ = writeln!(
                    out,
                    "user {} from there: {} failures; network known for the user: {}",
                    k.user_shown,
                    counted(n, self.policy.block_ip_user),
                    if known {
                        "yes (failures elsewhere do not delay it here)"
                    } else {
                        "no"
                    }
                );
            }
            let n = weigh(self.peek(&k.user, bucket).await);
            let _ = writeln!(
                out,
                "user {} from everywhere: {n} failures (delays only, never blocks)",
                k.user_shown
            );
        }
        for ((scope, _), until) in blocks.iter().zip(untils) {
            let left = until.filter(|u| *u > now).map(|u| (u - now).div_ceil(1000));
            let _ = writeln!(
                out,
                "block of {}: {}",
                k.describe(*scope),
                left.map_or("none".to_owned(), |s| format!("{s} s left"))
            );
            if blocked.is_none() {
                blocked = left.map(|s| (*scope, s));
            }
        }
        let _ = match blocked {
            Some((scope, left)) => writeln!(
                out,
                "next login: refused without asking the passdb (block of {}, {left} s left)",
                k.describe(scope)
            ),
            None => writeln!(
                out,
                "next login: allowed; a wrong password counts toward the limits above"
            ),
        };
        out
    }

    /// Lifts blocks and forgets the counts behind them: `ip` and `user` for
    /// that pair, `ip` alone for the network and every pair on it, `user`
    /// alone for that user from every network. Returns what was lifted.
    pub async fn unblock(&self, ip: Option<IpAddr>, user: Option<&[u8]>) -> Vec<String> {
        let Some(k) = self.keys(ip, user.unwrap_or_default()) else {
            return Vec::new();
        };
        // (block key, counter key, description)
        let mut targets: Vec<(String, String, String)> = Vec::new();
        let pair = |net: &str, name: &str| {
            let iu = keys::pair(net, name);
            (
                keys::block(&iu),
                iu,
                format!("ip {net} user {}", quoted(name)),
            )
        };
        match (&k.net, user) {
            (Some(_), Some(_)) => {
                let iu = k.ip_user.clone().unwrap_or_default();
                targets.push((keys::block(&iu), iu, k.describe(Scope::IpUser)));
            }
            (Some(net), None) => {
                let ipk = k.ip.clone().unwrap_or_default();
                targets.push((keys::block(&ipk), ipk, k.describe(Scope::Ip)));
                let users = self.partners(Partners::UsersOf(net)).await;
                targets.extend(users.iter().map(|name| pair(net, name)));
            }
            (None, _) => {
                let name = &k.name;
                let nets = self.partners(Partners::NetsOf(name)).await;
                targets.extend(nets.iter().map(|net| pair(net, name)));
            }
        }
        let Moment { now, bucket, .. } = self.moment();
        let mut lifted = Vec::new();
        for (block, counter, shown) in targets {
            let mut was = self.local.lift(&block, now);
            self.local.reset(&counter);
            if let Some(r) = self.redis() {
                match r.lift(&block).await {
                    Ok(shared) => was |= shared,
                    Err(e) => self.redis_failed(r, &e),
                }
                if let Err(e) = r.reset(&counter, bucket).await {
                    self.redis_failed(r, &e);
                }
            }
            if was {
                log::warn!("throttle: unblocked {shown} by the admin");
                lifted.push(shown);
            }
        }
        lifted
    }
}
