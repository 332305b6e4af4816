//! Configuration: a TOML file ([`RawConfig`], in [`raw`]) overlaid with
//! command-line flags, then [`Config::validate`]d (in [`validate`]) into
//! typed values, every section checking itself and all problems reported at
//! once.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::audit::LogTarget;
use crate::auth_http::MailProtocol;
use crate::authenticator::WaitPolicy;
use crate::cache::CachePolicy;
use crate::client_ip::TrustedProxies;
use crate::fastcgi::Limits;
use crate::listen::{ListenSpec, SocketOptions};
use crate::master_user::MasterUser;
use crate::mech::external::Rules;
use crate::mech::Mechanism;
use crate::scheme::Scheme;
use crate::service::RequiredHeader;
use crate::throttle::ThrottlePolicy;
use crate::upstream::Upstreams;
use crate::verifier::VerifierPolicy;

pub mod raw;
pub mod validate;

pub use raw::*;
pub use validate::Problems;

/// The passdb used when none is configured: the embedded SQLite database.
pub const DEFAULT_PASSDB: &str = "sqlite:/var/lib/nginx-auth-fcgi/users.db";
/// The socket used when no listener is configured or inherited.
pub const DEFAULT_LISTEN: &str = "unix:/run/nginx-auth-fcgi/auth.sock";

/// Default decision time limit: well below nginx's 60 s `auth_http_timeout`.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The upstream of a protocol no `upstream` names: a Dovecot (IMAP, POP3)
/// and an MTA (SMTP) on this host, on ports beside the ones the shipped
/// nginx config takes (143, 110, 587, 25). A warning says when one is used.
pub const DEFAULT_UPSTREAMS: [(MailProtocol, &str); 3] = [
    (MailProtocol::Imap, "imap=127.0.0.1:10143"),
    (MailProtocol::Pop3, "pop3=127.0.0.1:10110"),
    (MailProtocol::Smtp, "smtp=127.0.0.1:10025"),
];

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The error of the read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The configuration file (`(inline)` for text).
        path: PathBuf,
        /// The parser's error, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A value that does not validate; the text names the key and the
    /// value, never a secret.
    #[error("{0}")]
    Invalid(String),
    /// An `[[external.rule]]` that does not validate.
    #[error(transparent)]
    ExternalRule(#[from] crate::mech::external::RuleError),
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Listeners (empty: inherited socket, else [`DEFAULT_LISTEN`]).
    pub listen: Vec<ListenSpec>,
    /// Socket file mode/owner.
    pub socket: SocketOptions,
    /// Privileges to drop to after binding: (user, group).
    pub run_as: Option<(String, Option<String>)>,
    /// Passdb URIs in order.
    pub passdbs: Vec<String>,
    /// Default scheme for bare stored passwords.
    pub default_scheme: Option<Scheme>,
    /// Lookup template of the SQL server passdbs (`None`: built-in schema).
    pub password_query: Option<String>,
    /// App passwords' query of the SQL server passdbs (`None`: none there).
    pub app_password_query: Option<String>,
    /// Transparent rehash after plaintext logins (`None`: off).
    pub rehash: Option<crate::passdb::rehash::RehashPolicy>,
    /// Largest Argon2 memory cost (KiB) of a stored hash; see
    /// [`crate::scheme::set_argon2_max_memory_kib`].
    pub argon2_max_memory_kib: u32,
    /// Enabled mechanisms.
    pub mechanisms: HashSet<Mechanism>,
    /// Upstream pools (health checks not started).
    pub upstreams: Upstreams,
    /// Peers whose `Proxy-Protocol-Addr` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Required headers.
    pub required: Vec<RequiredHeader>,
    /// Local domains, lower-case.
    pub local_domains: Vec<String>,
    /// Send `Auth-Pass` for SMTP.
    pub smtp_pass: bool,
    /// Refuse SMTP clients without a confirmed reverse-DNS name.
    pub reject_unknown_client: bool,
    /// Protocols for which main passwords are refused (app passwords only).
    pub require_app_password: crate::passdb::app_password::Services,
    /// Log destination.
    pub log: LogTarget,
    /// Log level.
    pub log_level: log::LevelFilter,
    /// Back-off.
    pub wait: WaitPolicy,
    /// Decision time limit.
    pub timeout: Duration,
    /// Transport limits.
    pub limits: Limits,
    /// Redis for shared state (`None`: in memory): the URL and TLS files.
    pub state: Option<crate::shared_state::Target>,
    /// Throttle settings (`None`: off).
    pub throttle: Option<ThrottlePolicy>,
    /// Cache settings (`None`: off).
    pub cache: Option<CachePolicy>,
    /// Limits of the bounded verifier.
    pub verifier: VerifierPolicy,
    /// Master login for users verified without a plaintext.
    pub master_user: Option<MasterUser>,
    /// EXTERNAL mapping rules (empty: EXTERNAL not offered).
    pub external: Rules,
    /// What works but is probably not what the admin wants (a protocol
    /// left on its default upstream): logged at start-up, printed by
    /// check-config.
    pub warnings: Vec<String>,
    /// Credential lookup cache settings (`None`: off).
    pub lookup_cache: Option<crate::lookup_cache::LookupPolicy>,
    /// The HTTP Digest nonce key file (`None`: a random key per process);
    /// read when the service is built, so check-config and reloads check it.
    pub nonce_key_file: Option<std::path::PathBuf>,
}

/// A size in KiB from `256M`, `1G`, `65536K` (also `256MiB`, `1 GiB`; case
/// does not matter): K, M, G are KiB, MiB, GiB. A bare number is refused
/// (bytes or KiB would both be guesses), as is anything that does not fit in
/// a `u32` of KiB.
pub fn parse_size_kib(text: &str) -> Option<u32> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let shift = match unit.trim_start().to_ascii_uppercase().as_str() {
        "K" | "KIB" => 0,
        "M" | "MIB" => 10,
        "G" | "GIB" => 20,
        _ => return None,
    };
    let n: u32 = number.parse().ok()?;
    n.checked_mul(1 << shift)
}

/// A KiB size for people: `256 MiB`, `1 GiB`, `1536 KiB`.
pub fn format_size_kib(kib: u32) -> String {
    if kib != 0 && kib % (1 << 20) == 0 {
        format!("{} GiB", kib >> 20)
    } else if kib != 0 && kib % (1 << 10) == 0 {
        format!("{} MiB", kib >> 10)
    } else {
        format!("{kib} KiB")
    }
}

/// The path of a `sqlite:` URI, for the `user` admin commands.
pub fn sqlite_path(uri: &str) -> Option<PathBuf> {
    uri.strip_prefix("sqlite:").map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem() {
        let raw: RawConfig = toml::from_str(
            r#"
            listen = ["bogus:1"]
            socket_mode = "999"
            default_scheme = "ROT13"
            mechanisms = ["plain", "gssapi"]
            upstream = ["imap=nohostport"]
            upstream_domain = ["example.org:gopher=127.0.0.1:70"]
            trusted_proxies = ["10.0.0.0/33"]
            require_header = ["X_Key=secretvalue"]
            log = "file"
            [auth_wait]
            max_attempts = 0
            [upstream_domains."example.net"]
            imap = []
            "#,
        )
        .unwrap();
        let problems = Config::validate(raw).unwrap_err();
        assert_eq!(problems.len(), 11, "{problems:#?}");
        for value in ["nohostport", "gopher", "10.0.0.0/33", "example.net"] {
            assert!(
                problems.iter().any(|p| p.to_string().contains(value)),
                "{value} not named in {problems:#?}"
            );
        }
        assert!(
            problems
                .iter()
                .all(|p| !p.to_string().contains("secretvalue")),
            "secrets stay out of errors"
        );
    }

    #[test]
    fn lookup_cache_ttls_from_the_file_and_the_flags() {
        use crate::lookup_cache::LookupPolicy;
        let d = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(d.lookup_cache, Some(LookupPolicy::default()));
        assert_eq!(d.lookup_cache.unwrap().ttl, Duration::from_secs(60));
        assert_eq!(d.lookup_cache.unwrap().stale_ttl, Duration::from_secs(3600));
        let file: RawConfig =
            toml::from_str("lookup_cache_ttl = 30\nlookup_cache_stale_ttl = 600\n").unwrap();
        let cli = RawConfig {
            lookup_cache_ttl: Some(20),
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli))
            .unwrap()
            .lookup_cache
            .unwrap();
        assert_eq!(
            (c.ttl, c.stale_ttl),
            (Duration::from_secs(20), Duration::from_secs(600))
        );
        let off: RawConfig = toml::from_str("lookup_cache_ttl = 0\n").unwrap();
        assert_eq!(Config::validate(off).unwrap().lookup_cache, None);
        let never_stale: RawConfig = toml::from_str("lookup_cache_stale_ttl = 0\n").unwrap();
        let c = Config::validate(never_stale).unwrap().lookup_cache.unwrap();
        assert!(c.stale_ttl.is_zero());
        let short: RawConfig = toml::from_str("lookup_cache_stale_ttl = 10\n").unwrap();
        let problems = Config::validate(short).unwrap_err();
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["lookup_cache_stale_ttl must be 0 (off) or at least lookup_cache_ttl"]
        );
    }

    #[test]
    fn throttle_cache_and_state() {
        let file: RawConfig = toml::from_str(
            r#"
            state = "redis://:pw@127.0.0.1:6379/2"
            [throttle]
            block_ip_user = 3
            trusted_networks = ["192.0.2.0/24"]
            [cache]
            ttl_secs = 60
            "#,
        )
        .unwrap();
        let cli = RawConfig {
            throttle: RawThrottle {
                trusted_networks: Some(vec!["2001:db8::/32".into()]),
                ..RawThrottle::default()
            },
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(
            c.state.as_ref().map(|s| s.url.as_str()),
            Some("redis://:pw@127.0.0.1:6379/2")
        );
        let t = c.throttle.unwrap();
        assert_eq!(t.block_ip_user, 3);
        assert_eq!(t.block_ip, ThrottlePolicy::default().block_ip);
        assert_eq!(t.trusted, vec!["2001:db8::/32".parse().unwrap()]);
        assert_eq!(c.cache.unwrap().ttl, Duration::from_secs(60));
        let digest_warning = |w: &[String]| w.iter().any(|w| w.contains("nonce_key_file"));
        assert!(digest_warning(&c.warnings), "{:?}", c.warnings);
        assert_eq!(c.nonce_key_file, None);
        let keyed: RawConfig = toml::from_str(
            "state = \"redis://127.0.0.1:6379/0\"\nnonce_key_file = \"/k/nonce.key\"\n",
        )
        .unwrap();
        let keyed = Config::validate(keyed).unwrap();
        assert!(!digest_warning(&keyed.warnings), "{:?}", keyed.warnings);
        assert_eq!(
            keyed.nonce_key_file.as_deref(),
            Some(std::path::Path::new("/k/nonce.key"))
        );

        let d = Config::validate(RawConfig::default()).unwrap();
        assert!(!digest_warning(&d.warnings), "no state, no warning");
        assert_eq!(d.state, None);
        assert_eq!(d.throttle, Some(ThrottlePolicy::default()));
        assert_eq!(d.cache, Some(CachePolicy::default()));

        let off: RawConfig = toml::from_str(
            "state = \"memory\"\n[throttle]\nenabled = false\n[cache]\nttl_secs = 0\n",
        )
        .unwrap();
        let off = Config::validate(off).unwrap();
        assert!(off.throttle.is_none() && off.cache.is_none() && off.state.is_none());

        let bad: RawConfig = toml::from_str(
            r#"
            state = "memcached://:hunter2@h"
            [throttle]
            window_secs = 0
            ipv6_prefix = 0
            trusted_networks = ["10.0.0.0/40"]
            "#,
        )
        .unwrap();
        let problems = Config::validate(bad).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems.iter().all(|p| !p.to_string().contains("hunter2")));
    }

    #[test]
    fn state_over_tls_and_sentinel() {
        let parse = |text: &str| Config::validate(toml::from_str(text).unwrap());
        let c = parse(
            "state = \"rediss://:pw@redis.example:6380/1\"\n\
             state_ca_file = \"/etc/ca.pem\"\n\
             state_cert_file = \"/etc/c.pem\"\n\
             state_key_file = \"/etc/k.pem\"\n",
        )
        .unwrap();
        let s = c.state.unwrap();
        assert!(s.is_tls() && !s.is_sentinel());
        assert_eq!(s.tls.ca_file.as_deref(), Some("/etc/ca.pem".as_ref()));
        assert_eq!(s.tls.key_file.as_deref(), Some("/etc/k.pem".as_ref()));
        let c = parse("state = \"redis+sentinel://:pw@h1:26379,h2/mymaster/3\"\n").unwrap();
        assert!(c.state.unwrap().is_sentinel());
        // The CLI's files land beside the file's URL.
        let cli = RawConfig {
            state_ca_file: Some("/cli/ca.pem".into()),
            ..RawConfig::default()
        };
        let file: RawConfig = toml::from_str("state = \"rediss://h\"\n").unwrap();
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(
            c.state.unwrap().tls.ca_file.as_deref(),
            Some("/cli/ca.pem".as_ref())
        );

        for (text, expected) in [
            (
                "state = \"rediss://:hunter2@h\"\nstate_cert_file = \"/c.pem\"\n",
                "state_cert_file needs state_key_file as well",
            ),
            (
                "state = \"rediss://:hunter2@h\"\nstate_key_file = \"/k.pem\"\n",
                "state_key_file needs state_cert_file as well",
            ),
            (
                "state = \"redis://:hunter2@h\"\nstate_ca_file = \"/ca.pem\"\n",
                "need a rediss:// or rediss+sentinel:// state",
            ),
            (
                "state_ca_file = \"/ca.pem\"\n",
                "need a rediss:// or rediss+sentinel:// state",
            ),
            (
                "state = \"redis+sentinel://:hunter2@h1,h2\"\n",
                "needs the master name",
            ),
            (
                "state = \"redis+sentinel://h1/m?sentinel_pass=hunter2\"\n",
                "unknown parameter `sentinel_pass`",
            ),
            (
                "state = \"valkey://:hunter2@h\"\n",
                "`valkey:…` is not memory",
            ),
        ] {
            let problems = parse(text).unwrap_err();
            assert_eq!(problems.len(), 1, "{text}: {problems:#?}");
            let p = problems[0].to_string();
            assert!(p.contains(expected), "{text}: {p}");
            assert!(!p.contains("hunter2"), "{p}");
        }
    }

    #[test]
    fn argon2_max_memory_sizes() {
        for (text, kib) in [
            ("256M", 262144),
            ("1G", 1 << 20),
            ("65536K", 65536),
            ("512MiB", 524288),
            (" 2 GiB ", 2 << 20),
            ("64m", 65536),
            ("8k", 8),
            ("4095G", 4095 << 20),
        ] {
            assert_eq!(parse_size_kib(text), Some(kib), "{text}");
        }
        for bad in [
            "", "256", "M", "1.5G", "-1G", "1T", "1 MB", "4096G", "256 M M",
        ] {
            assert_eq!(parse_size_kib(bad), None, "{bad}");
        }
        assert_eq!(format_size_kib(262144), "256 MiB");
        assert_eq!(format_size_kib(1 << 20), "1 GiB");
        assert_eq!(format_size_kib(1536), "1536 KiB");
        assert_eq!(format_size_kib(1536 << 10), "1536 MiB");

        let c = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(c.argon2_max_memory_kib, 256 * 1024);
        let file: RawConfig = toml::from_str("argon2_max_memory = \"512M\"\n").unwrap();
        let c = Config::validate(file.clone()).unwrap();
        assert_eq!(c.argon2_max_memory_kib, 512 * 1024);
        // The command line wins.
        let cli = RawConfig {
            argon2_max_memory: Some("1G".into()),
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(c.argon2_max_memory_kib, 1 << 20);
        for bad in ["262144", "4K", "lots"] {
            let raw = RawConfig {
                argon2_max_memory: Some(bad.into()),
                ..RawConfig::default()
            };
            let problems = Config::validate(raw).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0]
                    .to_string()
                    .starts_with(&format!("argon2_max_memory `{bad}`: expected a size")),
                "{problems:?}"
            );
        }
        // A number is not a size in TOML either.
        assert!(toml::from_str::<RawConfig>("argon2_max_memory = 262144\n").is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<RawConfig>("lisen = []").is_err());
        let e = toml::from_str::<RawConfig>("[upstream_domains.\"a.example\"]\ngopher = []\n")
            .unwrap_err();
        assert!(e.to_string().contains("gopher"), "{e}");
    }

    #[test]
    fn pools_domains_and_trusted_proxies() {
        let file: RawConfig = toml::from_str(
            r#"
            upstream = ["imap=127.0.0.1:143,127.0.0.2:143", "imap=[::1]:143"]
            upstream_check_ms = 250
            trusted_proxies = ["10.0.0.0/8"]
            [upstream_domains."Example.org"]
            imap = ["127.0.1.1:143", "127.0.1.2:143"]
            smtp = ["127.0.1.1:25"]
            "#,
        )
        .unwrap();
        let c = Config::validate(file.clone()).unwrap();
        let u = &c.upstreams;
        assert_eq!(u.pool(MailProtocol::Imap).unwrap().members().len(), 3);
        assert_eq!(
            u.domain_pool("example.org", MailProtocol::Imap)
                .unwrap()
                .members()
                .len(),
            2
        );
        assert_eq!(u.check_interval(), Duration::from_millis(250));
        assert!(c.trusted_proxies.trusts("10.9.8.7".parse().unwrap()));
        // A domain pool on the command line replaces the file's.
        let cli = RawConfig {
            upstream_domain: vec!["other.example:imap=127.0.2.1:143".into()],
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert!(c
            .upstreams
            .domain_pool("example.org", MailProtocol::Imap)
            .is_none());
        assert!(c
            .upstreams
            .domain_pool("other.example", MailProtocol::Imap)
            .is_some());
    }

    #[test]
    fn reject_unknown_client_is_off_unless_asked() {
        assert!(
            !Config::validate(RawConfig::default())
                .unwrap()
                .reject_unknown_client
        );
        let file: RawConfig = toml::from_str("reject_unknown_client = true").unwrap();
        assert!(
            Config::validate(file.clone())
                .unwrap()
                .reject_unknown_client
        );
        // The flag can only turn it on; the file's value stays otherwise.
        let off: RawConfig = toml::from_str("reject_unknown_client = false").unwrap();
        let cli = RawConfig {
            reject_unknown_client: Some(true),
            ..RawConfig::default()
        };
        assert!(
            Config::validate(off.overlay(cli))
                .unwrap()
                .reject_unknown_client
        );
        let c = Config::validate(file.overlay(RawConfig::default())).unwrap();
        assert!(c.reject_unknown_client);
    }

    #[test]
    fn defaults_and_overlay() {
        let file: RawConfig = toml::from_str(
            r#"
            passdb = ["passwd-file:/etc/a"]
            local_domains = ["Example.ORG."]
            [auth_wait]
            base = 2
            "#,
        )
        .unwrap();
        let cli = RawConfig {
            upstream: vec!["imap=127.0.0.1:143".into()],
            log: Some("stderr".into()),
            ..RawConfig::default()
        };
        let c = Config::validate(file.overlay(cli)).unwrap();
        assert_eq!(c.passdbs, vec!["passwd-file:/etc/a"]);
        assert_eq!(c.local_domains, vec!["example.org"]);
        assert_eq!(c.wait.base, 2);
        assert_eq!(c.log, LogTarget::Stderr);
        assert_eq!(c.mechanisms.len(), 3);
        assert_eq!(c.socket.mode, 0o660);
        let c = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(c.passdbs, vec![DEFAULT_PASSDB]);
    }

    #[test]
    fn protocols_without_upstream_get_the_default_and_a_warning() {
        let c = Config::validate(RawConfig::default()).unwrap();
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        for (proto, spec) in DEFAULT_UPSTREAMS {
            let addr = spec.split_once('=').unwrap().1;
            let pool = c.upstreams.pool(proto).expect("default pool");
            assert_eq!(format!("{:?}", pool).matches(addr).count(), 1, "{pool:?}");
            assert!(
                c.warnings.iter().any(|w| w.contains(spec)),
                "{:?}",
                c.warnings
            );
        }
        let raw: RawConfig = toml::from_str(
            "upstream = [\"imap=10.0.0.1:143\", \"pop3=10.0.0.1:110\", \"smtp=10.0.0.1:25\"]",
        )
        .unwrap();
        let c = Config::validate(raw).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(format!("{:?}", c.upstreams.pool(MailProtocol::Imap)).contains("10.0.0.1:143"));
        // A domain pool does not stand in for the protocol's pool.
        let raw: RawConfig =
            toml::from_str("upstream_domain = [\"example.org:imap=10.0.0.2:143\"]").unwrap();
        let c = Config::validate(raw).unwrap();
        assert!(c
            .warnings
            .iter()
            .any(|w| w.contains("no upstream for imap")));
    }
}
