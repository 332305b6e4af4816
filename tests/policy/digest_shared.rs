//! Digest nonce counts shared through a real `redis-server`: two `Nonces`
//! (two instances) on one Redis refuse each other's counts, a malformed
//! shared value refuses (never fails open), and with Redis killed each
//! decides on its own memory.

use nginx_auth_fcgi::http_auth::digest::Nonces;
use nginx_auth_fcgi::http_auth::shared_nc::{self, SharedCounts};

use crate::common::redis::Redis;

fn instance(redis: &Redis) -> Nonces {
    Nonces::new().with_shared(
        SharedCounts::open(&nginx_auth_fcgi::shared_state::Target::new(redis.url())).unwrap(),
    )
}

#[tokio::test]
async fn counts_are_shared_and_a_malformed_one_refuses() {
    let mut redis = Redis::start();
    let (a, b) = (instance(&redis), instance(&redis));
    let nonce = a.issue("R");
    assert!(a.accept(&nonce, "c", 1, None, 300).await);
    assert!(
        !b.accept(&nonce, "c", 1, None, 300).await,
        "a's count, replayed to b"
    );
    assert!(b.accept(&nonce, "c", 2, None, 300).await);
    assert!(
        !a.accept(&nonce, "c", 2, None, 300).await,
        "b's count, replayed to a"
    );
    assert!(
        !a.accept(&nonce, "c", 1, None, 300).await,
        "lower than stored"
    );
    assert!(a.accept(&nonce, "c", 3, None, 300).await);
    let key = shared_nc::key(&nonce, "c");
    assert_eq!(
        redis.cmd(&["GET", &key]),
        "$1",
        "the highest count is stored"
    );
    let ttl: u64 = redis
        .cmd(&["PTTL", &key])
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(
        (300_000..=360_000).contains(&ttl),
        "kept about the nonce lifetime plus a minute: {ttl} ms"
    );

    // Values no instance writes: the request is refused, the value kept.
    for (i, bad) in ["x", "-1", "1e9", "0x10", "99999999999", "", " 5"]
        .iter()
        .enumerate()
    {
        let cnonce = format!("bad-{i}");
        let key = shared_nc::key(&nonce, &cnonce);
        assert_eq!(redis.cmd(&["SET", &key, bad]), "+OK");
        assert!(
            !a.accept(&nonce, &cnonce, 100, None, 300).await,
            "malformed shared count {bad:?}"
        );
    }
    let key = shared_nc::key(&nonce, "hash");
    assert_eq!(redis.cmd(&["HSET", &key, "f", "1"]), ":1");
    assert!(
        !a.accept(&nonce, "hash", 1, None, 300).await,
        "a key of another type"
    );

    // Redis killed: each instance's own memory decides; what it saw stays refused.
    redis.stop();
    assert!(
        !a.accept(&nonce, "c", 3, None, 300).await,
        "seen by a itself"
    );
    assert!(
        a.accept(&nonce, "fresh", 1, None, 300).await,
        "a fresh count still passes"
    );
    assert!(!a.accept(&nonce, "fresh", 1, None, 300).await);
    assert!(
        b.accept(&nonce, "fresh", 1, None, 300).await,
        "b never saw it: its own memory"
    );
}

/// nginx repeats one client request's subrequest after an internal redirect
/// (an index file) with the same header and `AUTH_REQUEST_ID`, and its
/// upstream may send the repeat to the other instance: that one accepts it.
/// The same header under another id (a replay in a new client request) is
/// still refused there, and so is a lower count under the same id.
#[tokio::test]
async fn one_client_requests_repeat_on_another_instance_is_accepted() {
    let redis = Redis::start();
    let (a, b) = (instance(&redis), instance(&redis));
    let nonce = a.issue("R");
    let id = Some("9f0c2d1e6a7b4c3d8e9f0a1b2c3d4e5f");
    assert!(a.accept(&nonce, "c", 1, id, 300).await);
    assert!(
        b.accept(&nonce, "c", 1, id, 300).await,
        "the redirect's subrequest on b"
    );
    let other = Some("0000000000000000000000000000beef");
    let (c, d) = (instance(&redis), instance(&redis));
    assert!(
        !c.accept(&nonce, "c", 1, other, 300).await,
        "a replay in another client request"
    );
    assert!(
        !d.accept(&nonce, "c", 1, None, 300).await,
        "a replay without a request id"
    );
    assert!(a.accept(&nonce, "c", 2, id, 300).await);
    assert!(
        !b.accept(&nonce, "c", 1, id, 300).await,
        "below the stored count, whatever the id"
    );
    let stored = redis.cmd(&["GET", &shared_nc::key(&nonce, "c")]);
    assert!(
        stored.starts_with("$34"),
        "count and request hash: {stored}"
    );

    // Redis behind a's memory (it lost the count): a refuses a replay in
    // a new client request X itself; nginx repeating request X on b must
    // not pass because a's refusal wrote X beside the count.
    assert!(a.accept(&nonce, "lost", 1, id, 300).await);
    assert_eq!(redis.cmd(&["DEL", &shared_nc::key(&nonce, "lost")]), ":1");
    let x = Some("0123456789abcdef0123456789abcdef");
    assert!(!a.accept(&nonce, "lost", 1, x, 300).await, "seen by a");
    assert!(
        !b.accept(&nonce, "lost", 1, x, 300).await,
        "the repeat of a request a refused"
    );
}
