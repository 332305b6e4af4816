//! The composition root: a validated [`Config`] in, a ready [`Service`] out.
//! `serve`, `check-config`, `auth test`, SIGHUP reloads, the tests and the
//! examples all build the service here, so none of them wires it differently.

use std::sync::Arc;

use crate::authenticator::{Authenticator, Policy};
use crate::cache::Cache;
use crate::config::{Config, RawConfig};
use crate::http_auth::digest::Nonces;
use crate::http_auth::nonce_key::NonceKey;
use crate::http_auth::shared_nc::SharedCounts;
use crate::http_auth::HttpAuth;
use crate::lookup_cache::LookupCache;
use crate::passdb::rehash::Rehasher;
use crate::passdb::{AnyPassdb, PassdbOptions, PasswdFile};
use crate::scheme;
use crate::service::Service;
use crate::throttle::{Clock, Throttle};
use crate::verifier::Verifier;

/// Opens the passdbs and builds the service of `config`, collecting every
/// problem (a passwd-file line, a passdb that cannot open, a Redis URL).
///
/// Stored hashes are checked against the Argon2 limit when they are parsed
/// (passwd-file at load, SQL/LDAP at lookup), so the process-wide limit is
/// set before the passdbs open; when the build fails, the previous limit (of
/// the configuration still serving) is put back.
pub fn build(config: &Config) -> Result<Service, Vec<String>> {
    let previous = scheme::set_argon2_max_memory_kib(config.argon2_max_memory_kib);
    let built = open_service(config);
    if built.is_err() {
        scheme::set_argon2_max_memory_kib(previous);
    }
    built
}

/// [`build`] from TOML text, as a configuration file would hold it.
pub fn from_toml(text: &str) -> Result<(Config, Service), Vec<String>> {
    let raw = RawConfig::parse(text).map_err(|e| vec![e.to_string()])?;
    let config =
        Config::validate(raw).map_err(|p| p.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let service = build(&config)?;
    Ok((config, service))
}

fn open_service(config: &Config) -> Result<Service, Vec<String>> {
    let mut problems = Vec::new();
    let mut passdbs = Vec::new();
    let options = PassdbOptions {
        default_scheme: config.default_scheme,
        password_query: config.password_query.clone(),
        app_password_query: config.app_password_query.clone(),
    };
    for uri in &config.passdbs {
        if let Some(path) = uri.strip_prefix("passwd-file:") {
            match PasswdFile::check(path.as_ref(), config.default_scheme) {
                Ok(p) => problems.extend(p.into_iter().map(|p| format!("passwd-file {path}: {p}"))),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Err(e) = create_sqlite_db(config, uri) {
            problems.push(e);
            continue;
        }
        match AnyPassdb::open_with(uri, &options) {
            Ok(p) => passdbs.push(p),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let throttle = match (&config.throttle, &config.state) {
        (None, _) => None,
        (Some(p), None) => Some(Arc::new(Throttle::in_memory(p.clone(), Clock::system()))),
        (Some(p), Some(url)) => match Throttle::with_redis(p.clone(), Clock::system(), url) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
    };
    // Without Redis built in, a `state` URL is refused even when only the
    // upstream health checks would use it (with a throttle it was above).
    #[cfg(not(feature = "redis"))]
    if config.throttle.is_none() && config.state.is_some() {
        problems.push(crate::shared_state::SharedStateError::NotBuilt.to_string());
    }
    let http = http_state(config).map_err(|p| problems.extend(p)).ok();
    if !problems.is_empty() {
        return Err(problems);
    }
    let policy = Policy {
        mechanisms: config.mechanisms.clone(),
        local_domains: config.local_domains.clone(),
        upstreams: config.upstreams.clone(),
        wait: config.wait,
        smtp_pass: config.smtp_pass,
        timeout: config.timeout,
        throttle,
        cache: config.cache.map(|c| Arc::new(Cache::new(c))),
    };
    let rehash = match &config.rehash {
        None => None,
        Some(r) => Some(
            Rehasher::start(r.clone(), config.default_scheme, &config.passdbs, &passdbs)
                .map_err(|e| vec![e.to_string()])?,
        ),
    };
    let auth = Authenticator::new(policy, passdbs)?
        .with_rehash(rehash)
        .with_trusted_proxies(config.trusted_proxies.clone())
        .with_verifier(Verifier::new(config.verifier))
        .with_master_user(config.master_user.clone())
        .with_reject_unknown_client(config.reject_unknown_client)
        .with_require_app_password(config.require_app_password)
        .with_lookup_cache(
            config
                .lookup_cache
                .map(|c| Arc::new(LookupCache::new(c, Clock::system()))),
        )
        .with_external(config.external.clone())
        .map_err(|e| vec![e.to_string()])?;
    let http = http.expect("no problems, so the HTTP state was built");
    Ok(Service::new(auth, config.required.clone()).with_http(http))
}

/// The HTTP auth state of `config`: the Digest nonce key from
/// `nonce_key_file` (else random), and the nonce counts shared in Redis
/// when `state` is a Redis URL, opened as the throttle opens its store.
fn http_state(config: &Config) -> Result<HttpAuth, Vec<String>> {
    let nonces = match &config.nonce_key_file {
        None => Nonces::new(),
        Some(path) => Nonces::with_key(NonceKey::read(path).map_err(|e| vec![e.to_string()])?),
    };
    let nonces = match &config.state {
        None => nonces,
        // Without the `redis` feature the URL was refused above already.
        Some(target) => match SharedCounts::open(target) {
            Ok(shared) => nonces.with_shared(shared),
            Err(e) if cfg!(feature = "redis") => return Err(vec![e.to_string()]),
            Err(_) => nonces,
        },
    };
    Ok(HttpAuth::with_nonces(nonces))
}

/// A new SQLite database of `uri` is created 0600 (its directory 0700),
/// owned by the user the daemon runs as (`--user`), before it opens.
fn create_sqlite_db(config: &Config, uri: &str) -> Result<(), String> {
    let (Some(path), Some((user, group))) = (crate::config::sqlite_path(uri), &config.run_as)
    else {
        return Ok(());
    };
    let ids = crate::listen::lookup_uid(user)
        .and_then(|u| {
            Ok((
                u,
                crate::listen::lookup_gid(group.as_deref().unwrap_or(user))?,
            ))
        })
        .map_err(|e| e.to_string())?;
    let owner = Some((ids.0.as_raw(), ids.1.as_raw()));
    crate::passdb::private_file::create_private(&path, owner)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Most threads on tokio's blocking pool (tokio's default is 512): 64, or
/// two per CPU on larger machines, so the verifier's default concurrency (one
/// per CPU) always fits beside SQLite queries and file reads.
fn blocking_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).max(64)
}

/// The daemon's tokio runtime. Expensive hashes are bounded by the verifier;
/// the blocking pool's cap bounds the rest of the blocking work (SQLite,
/// file reads) as well.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_service_from_inline_toml() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, "alice@example.org:{PLAIN}secret\n").unwrap();
        let toml = format!(
            "passdb = [\"passwd-file:{}\"]\nupstream = [\"imap=127.0.0.1:10143\"]\n",
            users.display()
        );
        let rt = runtime().unwrap();
        let _guard = rt.enter();
        let (config, _service) = from_toml(&toml).unwrap();
        assert_eq!(config.passdbs.len(), 1);

        let broken = format!(
            "passdb = [\"passwd-file:{}/missing\"]\n",
            dir.path().display()
        );
        let Err(problems) = from_toml(&broken) else {
            panic!("a missing passwd-file is a problem")
        };
        assert!(
            problems.iter().any(|p| p.contains("missing")),
            "{problems:?}"
        );
        assert!(from_toml("no_such_key = 1\n").is_err());
    }

    /// Without the `redis` feature a Redis `state` is refused once, with the
    /// throttle on (it would keep its counters there) and off (the upstream
    /// health checks would share their findings there).
    #[cfg(not(feature = "redis"))]
    #[test]
    fn without_redis_a_redis_state_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, "alice@example.org:{PLAIN}secret\n").unwrap();
        let rt = runtime().unwrap();
        let _guard = rt.enter();
        for throttle in ["", "[throttle]\nenabled = false\n"] {
            let toml = format!(
                "passdb = [\"passwd-file:{}\"]\nstate = \"redis://:pw@127.0.0.1:6379/0\"\n{throttle}",
                users.display()
            );
            let Err(problems) = from_toml(&toml) else {
                panic!("a redis:// state without the feature is a problem ({throttle:?})")
            };
            assert_eq!(
                problems,
                ["redis:// state needs the `redis` feature; this binary was built without it"],
                "{throttle:?}"
            );
        }
    }
}
