//! CHAP authentication of the initiator, and of the target when the
//! initiator asks for it (mutual CHAP), RFC 7143 §12.1.3 over RFC 1994.
//!
//! Exchange, target side:
//!
//! ```text
//! I: CHAP_A=<A1,A2...>          T: CHAP_A=<A> CHAP_I=<I> CHAP_C=<C>
//! I: CHAP_N=<N> CHAP_R=<R>      T: (verify R = H(I | secret | C))
//!    [CHAP_I=<I'> CHAP_C=<C'>]  T: [CHAP_N=<N'> CHAP_R=H(I' | target secret | C')]
//! ```
//!
//! Algorithms: 5 = MD5 (RFC 1994), 7 = SHA-256 (IANA "PPP Authentication
//! Algorithms", as used by Linux open-iscsi and LIO).
//!
//! Invariants: secrets are 12..=255 bytes and the two mutual secrets
//! differ, checked when the configuration is built; challenges come from
//! the OS CSPRNG; responses are compared in constant time; an initiator
//! challenge equal to ours (a reflection attack, §12.1.3) fails the login.

use subtle::ConstantTimeEq;

use super::limits::{
    CHAP_CHALLENGE_BYTES, CHAP_MAX_BINARY_BYTES, CHAP_MAX_SECRET_BYTES, CHAP_MIN_SECRET_BYTES,
};

/// A CHAP digest algorithm (the CHAP_A value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    Md5 = 5,
    Sha256 = 7,
}

impl ChapAlgorithm {
    fn from_value(v: &str) -> Option<Self> {
        match v {
            "5" => Some(Self::Md5),
            "7" => Some(Self::Sha256),
            _ => None,
        }
    }

    /// H(id | secret | challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            Self::Md5 => {
                let mut h = md5::Md5::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
            Self::Sha256 => {
                let mut h = sha2::Sha256::new();
                h.update([id]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
        }
    }
}

/// Configuration errors, reported when the target is set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapConfigError {
    #[error("CHAP secret for {user:?} is {len} bytes; it must be {CHAP_MIN_SECRET_BYTES} to {CHAP_MAX_SECRET_BYTES}")]
    SecretLength { user: String, len: usize },
    #[error("CHAP user name must be 1 to 255 bytes")]
    UserLength,
    #[error("mutual CHAP secret must differ from the initiator's secret")]
    SameSecrets,
}

/// A CHAP user and secret. The secret never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new(user: &str, secret: &[u8]) -> Result<Self, ChapConfigError> {
        if user.is_empty() || user.len() > 255 {
            return Err(ChapConfigError::UserLength);
        }
        if !(CHAP_MIN_SECRET_BYTES..=CHAP_MAX_SECRET_BYTES).contains(&secret.len()) {
            return Err(ChapConfigError::SecretLength {
                user: user.to_owned(),
                len: secret.len(),
            });
        }
        Ok(Self {
            user: user.to_owned(),
            secret: secret.to_vec(),
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }
}

/// The target's CHAP configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapConfig {
    /// What the initiator must prove it knows.
    initiator: Credentials,
    /// What we answer with when the initiator asks for mutual CHAP.
    target: Option<Credentials>,
}

impl ChapConfig {
    pub fn new(
        initiator: Credentials,
        target: Option<Credentials>,
    ) -> Result<Self, ChapConfigError> {
        if let Some(t) = &target {
            if bool::from(t.secret.ct_eq(&initiator.secret)) {
                return Err(ChapConfigError::SameSecrets);
            }
        }
        Ok(Self { initiator, target })
    }
}

/// Why a CHAP exchange failed; login answers 02 01 for every one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("no CHAP algorithm in common with {offered:?}")]
    NoCommonAlgorithm { offered: String },
    #[error("missing key {0}")]
    MissingKey(&'static str),
    #[error("malformed value for {0}")]
    BadValue(&'static str),
    #[error("unknown CHAP user {0:?}")]
    WrongUser(String),
    #[error("CHAP response does not match")]
    WrongResponse,
    #[error("initiator reflected our challenge")]
    Reflection,
    #[error("initiator asked for mutual CHAP but no target secret is configured")]
    MutualNotConfigured,
    #[error("no randomness available for the challenge: {0}")]
    Random(String),
}

/// Encodes a binary value as `0x` + lower-case hex (RFC 7143 §6.1).
pub fn encode_binary(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn base64_digit(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

fn decode_base64(s: &[u8]) -> Option<Vec<u8>> {
    let body = s
        .strip_suffix(b"==")
        .or_else(|| s.strip_suffix(b"="))
        .unwrap_or(s);
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in body {
        acc = (acc << 6) | base64_digit(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    // Leftover bits must be the zero padding of the last group.
    (bits < 6 && acc & ((1 << bits) - 1) == 0).then_some(out)
}

/// Decodes a `0x` (hex) or `0b` (base64) binary value of at most
/// `CHAP_MAX_BINARY_BYTES`.
pub fn decode_binary(value: &str) -> Option<Vec<u8>> {
    let bytes = value.as_bytes();
    let out = match bytes {
        [b'0', b'x' | b'X', hex @ ..] if !hex.is_empty() => {
            // An odd number of digits has an implicit leading zero.
            let mut digits = Vec::with_capacity(hex.len() + 1);
            if hex.len() % 2 == 1 {
                digits.push(0);
            }
            for &c in hex {
                digits.push(hex_digit(c)?);
            }
            digits.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect()
        }
        [b'0', b'b' | b'B', b64 @ ..] if !b64.is_empty() => decode_base64(b64)?,
        _ => return None,
    };
    (out.len() <= CHAP_MAX_BINARY_BYTES).then_some(out)
}

/// The target's side of one CHAP exchange, after it sent its challenge.
#[derive(Debug, Clone)]
pub struct ChapChallenge {
    algorithm: ChapAlgorithm,
    id: u8,
    challenge: Vec<u8>,
}

/// The initiator's second CHAP message.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChapReply<'a> {
    pub name: Option<&'a str>,
    pub response: Option<&'a str>,
    pub mutual_id: Option<&'a str>,
    pub mutual_challenge: Option<&'a str>,
}

impl ChapChallenge {
    /// Chooses the first algorithm of the initiator's CHAP_A list we support
    /// and draws a challenge from the OS CSPRNG. Returns the pairs to send.
    pub fn start(offered: &str) -> Result<(Self, Vec<(String, String)>), ChapError> {
        let mut random = [0u8; CHAP_CHALLENGE_BYTES + 1];
        getrandom::fill(&mut random).map_err(|e| ChapError::Random(e.to_string()))?;
        let (id, challenge) = random.split_first().unwrap_or((&0, &[]));
        Self::start_with(offered, *id, challenge.to_vec())
    }

    /// [`ChapChallenge::start`] with a given identifier and challenge.
    pub fn start_with(
        offered: &str,
        id: u8,
        challenge: Vec<u8>,
    ) -> Result<(Self, Vec<(String, String)>), ChapError> {
        let algorithm = offered
            .split(',')
            .find_map(ChapAlgorithm::from_value)
            .ok_or_else(|| ChapError::NoCommonAlgorithm {
                offered: offered.chars().take(64).collect(),
            })?;
        let answer = vec![
            ("CHAP_A".to_owned(), (algorithm as u8).to_string()),
            ("CHAP_I".to_owned(), id.to_string()),
            ("CHAP_C".to_owned(), encode_binary(&challenge)),
        ];
        Ok((
            Self {
                algorithm,
                id,
                challenge,
            },
            answer,
        ))
    }

    /// Verifies the initiator's reply; on success returns the pairs to send
    /// (our mutual answer, or nothing).
    pub fn verify(
        &self,
        cfg: &ChapConfig,
        reply: ChapReply<'_>,
    ) -> Result<Vec<(String, String)>, ChapError> {
        let name = reply.name.ok_or(ChapError::MissingKey("CHAP_N"))?;
        let response = reply.response.ok_or(ChapError::MissingKey("CHAP_R"))?;
        let response = decode_binary(response).ok_or(ChapError::BadValue("CHAP_R"))?;
        // Check the mutual request's form before answering anything.
        let mutual = match (reply.mutual_id, reply.mutual_challenge) {
            (None, None) => None,
            (Some(i), Some(c)) => {
                let id: u8 = i.parse().map_err(|_| ChapError::BadValue("CHAP_I"))?;
                let challenge = decode_binary(c)
                    .filter(|c| !c.is_empty())
                    .ok_or(ChapError::BadValue("CHAP_C"))?;
                Some((id, challenge))
            }
            (None, Some(_)) => return Err(ChapError::MissingKey("CHAP_I")),
            (Some(_), None) => return Err(ChapError::MissingKey("CHAP_C")),
        };
        let expected = self
            .algorithm
            .response(self.id, &cfg.initiator.secret, &self.challenge);
        let user_ok = name.as_bytes().ct_eq(cfg.initiator.user.as_bytes());
        let response_ok = response.ct_eq(&expected);
        if !bool::from(user_ok) {
            return Err(ChapError::WrongUser(name.chars().take(64).collect()));
        }
        if !bool::from(response_ok) {
            return Err(ChapError::WrongResponse);
        }
        let Some((id, challenge)) = mutual else {
            return Ok(Vec::new());
        };
        if bool::from(challenge.ct_eq(&self.challenge)) {
            return Err(ChapError::Reflection);
        }
        let target = cfg.target.as_ref().ok_or(ChapError::MutualNotConfigured)?;
        let ours = self.algorithm.response(id, &target.secret, &challenge);
        Ok(vec![
            ("CHAP_N".to_owned(), target.user.clone()),
            ("CHAP_R".to_owned(), encode_binary(&ours)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(mutual: bool) -> ChapConfig {
        let target = mutual.then(|| Credentials::new("target-user", b"target-secret-42").unwrap());
        ChapConfig::new(
            Credentials::new("alice", b"0123456789abcdef").unwrap(),
            target,
        )
        .unwrap()
    }

    fn reply<'a>(name: &'a str, response: &'a str) -> ChapReply<'a> {
        ChapReply {
            name: Some(name),
            response: Some(response),
            ..ChapReply::default()
        }
    }

    #[test]
    fn md5_response_matches_an_independent_computation() {
        // Python: hashlib.md5(b'\x01' + b'secret-secret' + bytes(16)).hexdigest()
        let r = ChapAlgorithm::Md5.response(1, b"secret-secret", &[0u8; 16]);
        assert_eq!(encode_binary(&r), "0xdaf637299e6a2abe91fce2f14848e844");
    }

    #[test]
    fn sha256_response_matches_an_independent_computation() {
        // Python: hashlib.sha256(b'\x07' + b'0123456789abcdef' + bytes(range(16)))
        let challenge: Vec<u8> = (0..16).collect();
        let r = ChapAlgorithm::Sha256.response(7, b"0123456789abcdef", &challenge);
        assert_eq!(
            encode_binary(&r),
            "0x07e16dfab3d4277cb48c0349712e8646f259b11a427a3ad9d782b50aeefbda4c"
        );
    }

    #[test]
    fn short_secret_is_refused_at_configuration() {
        assert!(matches!(
            Credentials::new("u", b"elevenbytes"),
            Err(ChapConfigError::SecretLength { len: 11, .. })
        ));
        assert!(Credentials::new("u", b"twelve-bytes").is_ok());
    }

    #[test]
    fn equal_mutual_secrets_are_refused() {
        let i = Credentials::new("i", b"same-secret-123").unwrap();
        let t = Credentials::new("t", b"same-secret-123").unwrap();
        assert_eq!(
            ChapConfig::new(i, Some(t)),
            Err(ChapConfigError::SameSecrets)
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = Credentials::new("u", b"super-secret-value").unwrap();
        assert!(!format!("{c:?}").contains("super-secret"));
    }

    #[test]
    fn algorithm_follows_initiator_preference_among_supported() {
        let (c, a) = ChapChallenge::start_with("7,5", 1, vec![0; 16]).unwrap();
        assert_eq!(c.algorithm, ChapAlgorithm::Sha256);
        assert_eq!(a[0], ("CHAP_A".into(), "7".into()));
        let (c, _) = ChapChallenge::start_with("6,5", 1, vec![0; 16]).unwrap();
        assert_eq!(c.algorithm, ChapAlgorithm::Md5);
        assert!(matches!(
            ChapChallenge::start_with("6,8", 1, vec![0; 16]),
            Err(ChapError::NoCommonAlgorithm { .. })
        ));
    }

    #[test]
    fn random_challenges_are_long_and_differ() {
        let (a, _) = ChapChallenge::start("5").unwrap();
        let (b, _) = ChapChallenge::start("5").unwrap();
        assert!(a.challenge.len() >= 16);
        assert_ne!(a.challenge, b.challenge);
    }

    #[test]
    fn right_secret_passes_and_wrong_secret_fails() {
        let cfg = config(false);
        for alg in ["5", "7"] {
            let (c, _) = ChapChallenge::start(alg).unwrap();
            let good = encode_binary(&c.algorithm.response(
                c.id,
                b"0123456789abcdef",
                &c.challenge,
            ));
            assert_eq!(c.verify(&cfg, reply("alice", &good)), Ok(vec![]));
            let bad = encode_binary(
                &c.algorithm
                    .response(c.id, b"0123456789abcdeX", &c.challenge),
            );
            assert_eq!(
                c.verify(&cfg, reply("alice", &bad)),
                Err(ChapError::WrongResponse)
            );
            assert!(matches!(
                c.verify(&cfg, reply("bob", &good)),
                Err(ChapError::WrongUser(_))
            ));
        }
    }

    #[test]
    fn mutual_chap_answers_with_the_target_secret() {
        let cfg = config(true);
        let (c, _) = ChapChallenge::start_with("5", 9, vec![7; 16]).unwrap();
        let good = encode_binary(&ChapAlgorithm::Md5.response(9, b"0123456789abcdef", &[7; 16]));
        let answer = c
            .verify(
                &cfg,
                ChapReply {
                    mutual_id: Some("33"),
                    mutual_challenge: Some("0x0102030405060708090a0b0c0d0e0f10"),
                    ..reply("alice", &good)
                },
            )
            .unwrap();
        let challenge: Vec<u8> = (1..=16).collect();
        let want = ChapAlgorithm::Md5.response(33, b"target-secret-42", &challenge);
        assert_eq!(
            answer,
            vec![
                ("CHAP_N".into(), "target-user".into()),
                ("CHAP_R".into(), encode_binary(&want))
            ]
        );
    }

    #[test]
    fn reflected_challenge_is_refused() {
        let cfg = config(true);
        let (c, _) = ChapChallenge::start_with("5", 9, vec![7; 16]).unwrap();
        let good = encode_binary(&ChapAlgorithm::Md5.response(9, b"0123456789abcdef", &[7; 16]));
        let ours = encode_binary(&[7; 16]);
        let got = c.verify(
            &cfg,
            ChapReply {
                mutual_id: Some("9"),
                mutual_challenge: Some(&ours),
                ..reply("alice", &good)
            },
        );
        assert_eq!(got, Err(ChapError::Reflection));
    }

    #[test]
    fn mutual_without_target_secret_fails() {
        let cfg = config(false);
        let (c, _) = ChapChallenge::start_with("5", 9, vec![7; 16]).unwrap();
        let good = encode_binary(&ChapAlgorithm::Md5.response(9, b"0123456789abcdef", &[7; 16]));
        let got = c.verify(
            &cfg,
            ChapReply {
                mutual_id: Some("1"),
                mutual_challenge: Some("0x01020304"),
                ..reply("alice", &good)
            },
        );
        assert_eq!(got, Err(ChapError::MutualNotConfigured));
    }

    #[test]
    fn binary_values_decode_in_hex_and_base64() {
        assert_eq!(decode_binary("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        let long = format!("0x{}", "00".repeat(CHAP_MAX_BINARY_BYTES + 1));
        assert_eq!(decode_binary(&long), None);
    }

    proptest! {
        #[test]
        fn hex_encoding_round_trips(bytes in proptest::collection::vec(any::<u8>(), 1..64)) {
            prop_assert_eq!(decode_binary(&encode_binary(&bytes)), Some(bytes));
        }

        #[test]
        fn arbitrary_values_never_panic(s in "\\PC{0,80}") {
            let _ = decode_binary(&s);
        }
    }
}
