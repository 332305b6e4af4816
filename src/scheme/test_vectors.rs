//! Dovecot's own output, shared by the unit tests of the scheme modules:
//! `doveadm pw` hashes of two passwords (one per scheme, in [`Scheme::ALL`]
//! order), extra forms (rounds, suffixes, aliases), and a password longer
//! than the HMAC block.

use super::{Scheme, StoredPassword};

pub(super) const UNICODE_PW: &str = "pässwörd %+:";
pub(super) const ASCII_PW: &str = "hunter2";

/// `doveadm pw -s SCHEME -p 'pässwörd %+:'`, Dovecot 2.3.19.1, one per scheme.
pub(super) const DOVEADM_UNICODE: &[&str] = &[
    r"{PLAIN}pässwörd %+:",
    r"{CLEAR}pässwörd %+:",
    r"{CRAM-MD5}6f6e9975dd300f437d7d8d0e806c7647a24a9373f20cd3f8a4d3f0a9e3e25ba2",
    r"{MD5-CRYPT}$1$RVDP5bf/$VU25DNR0.g9JqrKMywBo.1",
    r"{SHA256-CRYPT}$5$YBxOcb1PcF6qhOdW$4pCSIqm4KaTVc6kTVC.KdNuRPR89Ll1eAdtP98T72s9",
    r"{SHA512-CRYPT}$6$rQbW/zz/Izu0tYdj$5sA1nDcGI4qVl5rrvQiRlhs70yvTewk.gfeW7EWjW.FwYYsdoICRAb970Tuy2nNlLr2si7IqPxmtuzCdbSR9y0",
    r"{BLF-CRYPT}$2y$05$iwp4X7XC6xqP2ZO5lTquv.u9eTXBgbqHyCHRRbJ./YQ7oqyqLK4va",
    r"{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$JpgKwTThAkNwGNa7++I35Q$IgwMfoEJf/fQgTLaIxyVUiscJRYLB16GdB0ZPpJhWZk",
    r"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$2sZcItI1HuQ8Jd1z3JoTaA$vWYdMTirXl6ps8wOy5uAjH23p3BamHpuhpdGCSeUl44",
    r"{SHA}1QK0dfQS50JhI8A8pcvRgOwOme0=",
    r"{SSHA}MRLQpb/hI/N92mXgyv4bizxhYK4l1LbP",
    r"{SHA256}s4FaZ2B63HuhMY5roBsGcwtazuywl+vtKSVggqyhakA=",
    r"{SSHA256}rZ8NXm7Y3O8u1AF5Y7sKY+Xui0qvKBU4Tpr2TEu9Uz+7QoRd",
    r"{SHA512}tWLozOQgGAdLfZ59H8r97kICYcK42CV2f2sywm+UzyvHFmrQ3XMdJKTvJAAXU1FBwGSIA5TL7hgx3AAar+Y7Ow==",
    r"{SSHA512}MOjnC46nv9tXP9OevkRMJ9Brqs0YZ24F6+LDE7SwHfekkVnjU4cSIK0p/h97/EYuYWfeqEeaqwMaLt2eTJ0KxDA5Yo4=",
    r"{PBKDF2}$1$UpY2AgcIUX7L1fCn$5000$5b0df6dbe3f01a20ff9adbaad2ec97f9dc16c8da",
];

/// `doveadm pw -s SCHEME -p 'hunter2'`, Dovecot 2.3.19.1, one per scheme.
pub(super) const DOVEADM_ASCII: &[&str] = &[
    r"{PLAIN}hunter2",
    r"{CLEAR}hunter2",
    r"{CRAM-MD5}60ebd8347e945af7703b0d59d8bfedc236234196f561c057cf5a5d5a6e58304a",
    r"{MD5-CRYPT}$1$T7SgkVE0$j/oycqKpTyRUicJmEktGI1",
    r"{SHA256-CRYPT}$5$ApAljbKf0fgT8yIG$chnWcLEbi/0VUEMaHFyfuVvhoENyhfCexEDGriX/IRA",
    r"{SHA512-CRYPT}$6$r3QoXKo8LhbpIwLG$qb/l/u45x3vVbbmgRxUjIL/YsS7EDI2R9gQIRWbe1vXaZGfm30dXRL2.TUaHjEavC6PSBUZTxLiYIgBC6e9SR1",
    r"{BLF-CRYPT}$2y$05$w2SzqJTD0vC9gRBTkMP87.vopYBtFDeBRm8MlHNeUBN6glyPcY0yi",
    r"{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$Qf8E/iBBHpgOuHZIcsQI1Q$ppkCZgcVfwE4uxMihr6BIZbFxcM+sTbkC+lqMYUJghA",
    r"{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$4RGsphEBhN3o4+I2a4W2Ww$+QVcbWSet86GduCd3fae4gB3YqLf3/2e8G00IOh1fAs",
    r"{SHA}87u9ZqY9S/F0eUBXjsPQEDUw4h0=",
    r"{SSHA}43cFnAS0t9mR28lCHZNyT7at+QZCHrHk",
    r"{SHA256}9S+9MrKzuG/4jvbEkGKChfSCrxXdyylUH5S89Saj9sc=",
    r"{SSHA256}+0s8a92DsBYT63PFDzEsalomYbCcDowPxNylejwrSDQ0G6/b",
    r"{SHA512}a5ftaNFOs/GqlZzl1Jx9xhLh6x2v1zsecFhHSD/WpsgJ8s606N9v+ZhMYpj/AoXKzmYUv42qnwBwEBtsiYmeIg==",
    r"{SSHA512}Dzc155LbnbsBBmwwQObeJOYq+G89PUr24It2dhUpomflPGLC6kv7YilfK5zk3m29UbLjA3wO1erSf8scxb19LSMS7YI=",
    r"{PBKDF2}$1$8eStodSPHnOYuVg.$5000$0dfe97b331e0ac8d3a8cfee190c646fd60db1d06",
];

/// More `doveadm pw … -p hunter2` output: explicit rounds (`-r`), the
/// `.HEX`/`.B64` suffixes, and bcrypt's other version letters (the same
/// hash relabelled; `doveadm pw -t` accepts both).
pub(super) const DOVEADM_ASCII_EXTRA: &[&str] = &[
    r"{SHA512-CRYPT}$6$rounds=1000$EAcdWttzJ6tG/Au3$Be/Z/R0nF24fvb7b13BJVWkKmqJkFVfVKR9NQ9r75AydV2qTbjsC/3gHlFBK3j9sEeQlbT7H.MopLX/MNlc.6.",
    r"{SHA256-CRYPT}$5$rounds=1000$DSRlZ9DiyOfwsC5R$99mJLP/Tge2w3xdHMJpOWsB69qwOn/nc4dkeLsz3yC4",
    r"{BLF-CRYPT}$2y$04$oLWuEr8IX5qz18DusXcpue8FUCTn0t7t/FUbp/bjpCH69Kik2.UUq",
    r"{BLF-CRYPT}$2a$05$w2SzqJTD0vC9gRBTkMP87.vopYBtFDeBRm8MlHNeUBN6glyPcY0yi",
    r"{BLF-CRYPT}$2b$05$w2SzqJTD0vC9gRBTkMP87.vopYBtFDeBRm8MlHNeUBN6glyPcY0yi",
    r"{PBKDF2}$1$otRuiJeSp58hlk.Z$10$b2bb97a49f4a0ab8b77aeba484ffef66275dc248",
    r"{SHA.HEX}f3bbbd66a63d4bf1747940578ec3d0103530e21d",
    r"{SHA.B64}87u9ZqY9S/F0eUBXjsPQEDUw4h0=",
    r"{SHA256.HEX}f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7",
    r"{SHA256.B64}9S+9MrKzuG/4jvbEkGKChfSCrxXdyylUH5S89Saj9sc=",
    r"{SHA512.HEX}6b97ed68d14eb3f1aa959ce5d49c7dc612e1eb1dafd73b1e705847483fd6a6c809f2ceb4e8df6ff9984c6298ff0285cace6614bf8daa9f0070101b6c89899e22",
    r"{SHA512.B64}a5ftaNFOs/GqlZzl1Jx9xhLh6x2v1zsecFhHSD/WpsgJ8s606N9v+ZhMYpj/AoXKzmYUv42qnwBwEBtsiYmeIg==",
    r"{SSHA.HEX}96de94d2a283974e5d8733f91b0336abb43a98a7061d855a",
    r"{SSHA.B64}Q2vRKxEY+ehnoRjLHKJsEup+nByTFesf",
    r"{SSHA256.HEX}0ec6456c4982dddd6e90cd46fcfe5238bcc66437bb110a05fb008f65b72b85285f7b23e5",
    r"{SSHA256.B64}YJCAAagrRDhfirRD00+DKPCvfF/mvZVHF2LRxyKMVetBSwId",
    r"{SSHA512.HEX}7196475aebf953798a937cd42960553d4acbe06ec4544d2d231832d4f2360d3f041e84425207c06383f61e2a2c350e933ad316f7605e72361d62d60d1f8596411b7c8b56",
    r"{SSHA512.B64}TX4lA1DXWEGbpm1ajKOv7vzCvWduFpCaaMuItdf58BDcIsbabkknqu1KfiMYwrnq2izQojX6EmLKrvaY1p68970Fing=",
    r"{CRAM-MD5.HEX}60ebd8347e945af7703b0d59d8bfedc236234196f561c057cf5a5d5a6e58304a",
    r"{CRAM-MD5.B64}YOvYNH6UWvdwOw1Z2L/twjYjQZb1YcBXz1pdWm5YMEo=",
    // Hex digests without a suffix: Dovecot guesses hex from the length.
    r"{SHA}f3bbbd66a63d4bf1747940578ec3d0103530e21d",
    r"{SHA256}F52FBD32B2B3B86FF88EF6C490628285F482AF15DDCB29541F94BCF526A3F6C7",
    r"{SHA512}6b97ed68d14eb3f1aa959ce5d49c7dc612e1eb1dafd73b1e705847483fd6a6c809f2ceb4e8df6ff9984c6298ff0285cace6614bf8daa9f0070101b6c89899e22",
    // Scheme names are case-insensitive; aliases from `doveadm pw -l`.
    r"{sha1}87u9ZqY9S/F0eUBXjsPQEDUw4h0=",
    r"{Md5}$1$T7SgkVE0$j/oycqKpTyRUicJmEktGI1",
    r"{CLEARTEXT}hunter2",
    r"{HMAC-MD5}60ebd8347e945af7703b0d59d8bfedc236234196f561c057cf5a5d5a6e58304a",
];

/// 70 × `x` then `ü`: longer than the 64-byte HMAC block, so the key is
/// hashed first. `doveadm pw -s CRAM-MD5` / `-s MD5-CRYPT`.
pub(super) fn long_pw() -> String {
    format!("{}ü", "x".repeat(70))
}
pub(super) const DOVEADM_LONG: &[&str] = &[
    r"{CRAM-MD5}5501bcb095592634f101fa6f27c03c6c999204e02309ba47c8454a02d746743e",
    r"{MD5-CRYPT}$1$ig/DAXHC$wtJeU0BUIF7wrqotbLjBX/",
];

pub(super) fn check_vectors(vectors: &[&str], password: &[u8]) {
    for h in vectors {
        let sp = StoredPassword::parse(h, Scheme::Plain).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert!(sp.verify(password).unwrap(), "accepts: {h}");
        let mut wrong = password.to_vec();
        wrong[0] ^= 0x20; // flip case of the first letter
        assert!(!sp.verify(&wrong).unwrap(), "rejects: {h}");
        assert!(!sp.verify(b"").unwrap(), "rejects empty: {h}");
    }
}
