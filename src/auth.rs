//! Access control: API tokens with scopes, from the configuration.
//!
//! The configuration holds the SHA-256 digest of each token (`[[auth.tokens]]`
//! with `name`, `sha256`, `scopes`), never the token itself, so a leaked config
//! file grants nothing. A presented token is hashed and its digest compared with
//! *every* configured digest in constant time ([`subtle`]), without stopping at a
//! match, so neither the time taken nor its variation says which token (if any)
//! came close. Comparing digests rather than tokens also makes the work
//! independent of the presented token's length.
//!
//! Scopes: `ingest` (sending events), `query` (every read: profiles, segments,
//! the change feed), `admin` (definitions, and erasure when it comes). `admin`
//! implies the other two: an operator's token can do everything.
//!
//! Access control is on when at least one token is configured; with none it is
//! off, which the server allows only on loopback addresses unless told
//! `--insecure` (see [`crate::server`]).
//!
//! How a token is presented: HTTP `Authorization: Bearer TOKEN`, or HTTP Basic
//! with the token as user name and any password (how the Segment and RudderStack
//! SDKs send their write key: `base64("WRITE_KEY:")`); TCP ingest, a first line
//! `{"auth": "TOKEN"}` (binary framing: a first frame whose body is that JSON).

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Query,
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        [Scope::Ingest, Scope::Query, Scope::Admin]
            .into_iter()
            .find(|scope| scope.name() == s)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Whether these scopes allow `scope` (`admin` allows everything).
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }
}

/// One configured token: its name (for logs and answers) and the digest of the token.
#[derive(Clone, Debug)]
pub struct Token {
    pub name: String,
    digest: [u8; 32],
    pub scopes: Scopes,
}

/// The access control settings: the tokens and which endpoints are open.
#[derive(Clone, Debug)]
pub struct Auth {
    tokens: Vec<Token>,
    /// `GET /healthz` needs no token (for load balancers' probes).
    pub public_health: bool,
    /// `GET /metrics` needs no token; otherwise it needs `query`.
    pub public_metrics: bool,
}

/// The token as written in the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub scopes: Vec<String>,
}

/// Why a request or a connection was refused. `Display` is the answer's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("authentication required: send Authorization: Bearer TOKEN (or HTTP Basic with the token as user name)")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("unknown token")]
    Unknown,
    #[error("token {token:?} does not have the {scope} scope")]
    Scope { token: String, scope: Scope },
}

impl Denied {
    /// 403 (known token, missing scope) rather than 401 (no known token).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Denied::Scope { .. })
    }
}

/// The hex SHA-256 of a token: what `[[auth.tokens]] sha256` holds
/// (`printf %s "$TOKEN" | sha256sum` prints the same).
pub fn digest_hex(token: &[u8]) -> String {
    hex::encode(Sha256::digest(token))
}

impl Auth {
    /// Validates the configured tokens: 64 hex digits, known scopes, at least one
    /// scope, no name or digest twice. The error says which token and what is wrong.
    pub fn new(
        raw: &[RawToken],
        public_health: bool,
        public_metrics: bool,
    ) -> Result<Auth, String> {
        let mut tokens: Vec<Token> = Vec::with_capacity(raw.len());
        for (i, t) in raw.iter().enumerate() {
            let at = format!("token {} ({:?})", i + 1, t.name);
            if t.name.is_empty() {
                return Err(format!("{at}: name must not be empty"));
            }
            let mut digest = [0u8; 32];
            // The error does not echo what was given: a raw token pasted by
            // mistake would otherwise appear in logs.
            hex::decode_to_slice(t.sha256.trim(), &mut digest).map_err(|_| {
                format!(
                    "{at}: sha256 must be the 64 hex digits of a SHA-256 digest (it has {} characters)",
                    t.sha256.trim().len()
                )
            })?;
            if digest == <[u8; 32]>::from(Sha256::digest(b"")) {
                return Err(format!(
                    "{at}: sha256 is the digest of the empty token (was the token's variable \
                     unset when it was hashed?); anyone could present it"
                ));
            }
            if t.scopes.is_empty() {
                return Err(format!(
                    "{at}: scopes is empty; give one or more of ingest, query, admin"
                ));
            }
            let mut scopes = Scopes::default();
            for s in &t.scopes {
                let scope = Scope::parse(s).ok_or_else(|| {
                    format!("{at}: unknown scope {s:?} (expected ingest, query or admin)")
                })?;
                scopes.0 |= scope.bit();
            }
            if let Some(other) = tokens.iter().find(|o| o.name == t.name) {
                return Err(format!("{at}: the name {:?} is used twice", other.name));
            }
            if let Some(other) = tokens.iter().find(|o| o.digest == digest) {
                return Err(format!("{at}: same sha256 as token {:?}", other.name));
            }
            tokens.push(Token {
                name: t.name.clone(),
                digest,
                scopes,
            });
        }
        Ok(Auth {
            tokens,
            public_health,
            public_metrics,
        })
    }

    /// No tokens: access control is off.
    pub fn disabled() -> Auth {
        Auth {
            tokens: Vec::new(),
            public_health: true,
            public_metrics: true,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The configured token `presented` is, if any: its digest is compared with
    /// every configured digest in constant time, and the loop never stops early.
    pub fn identify(&self, presented: &[u8]) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, t) in self.tokens.iter().enumerate() {
            let eq = t.digest.ct_eq(&digest);
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        bool::from(found).then(|| &self.tokens[index as usize])
    }

    /// Checks presented credentials (`None`: none sent) for `scope`.
    pub fn check(&self, presented: Option<&[u8]>, scope: Scope) -> Result<&Token, Denied> {
        // An empty token (`Basic Og==`, `{"auth": ""}`) is no token.
        let presented = presented.filter(|p| !p.is_empty()).ok_or(Denied::Missing)?;
        let token = self.identify(presented).ok_or(Denied::Unknown)?;
        if token.scopes.allows(scope) {
            Ok(token)
        } else {
            Err(Denied::Scope {
                token: token.name.clone(),
                scope,
            })
        }
    }
}

/// The token in an HTTP `Authorization` header value: `Bearer TOKEN`, or `Basic`
/// with base64 of `TOKEN:PASSWORD` (the password is ignored; the Segment SDKs send
/// `WRITE_KEY:`). The scheme is case-insensitive (RFC 9110).
pub fn token_from_authorization(value: &[u8]) -> Result<Vec<u8>, Denied> {
    let value = value.trim_ascii();
    let (scheme, rest) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
        None => (value, &[][..]),
    };
    if rest.is_empty() {
        return Err(Denied::Malformed("no credentials after the scheme"));
    }
    if scheme.eq_ignore_ascii_case(b"bearer") {
        Ok(rest.to_vec())
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| Denied::Malformed("Basic credentials are not base64"))?;
        let user = match decoded.iter().position(|&b| b == b':') {
            Some(i) => &decoded[..i],
            None => &decoded[..],
        };
        Ok(user.to_vec())
    } else {
        Err(Denied::Malformed(
            "unsupported scheme (expected Bearer or Basic)",
        ))
    }
}

/// A TCP ingest connection's first line for `token`, without the newline:
/// `{"auth": "TOKEN"}`.
pub fn first_line(token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "auth": token })).expect("json")
}

/// The token in a TCP ingest connection's first line (or first binary frame):
/// the JSON object `{"auth": "TOKEN"}`.
pub fn token_from_first_line(line: &[u8]) -> Result<Vec<u8>, Denied> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct First {
        auth: String,
    }
    match serde_json::from_slice::<First>(line.trim_ascii()) {
        Ok(first) => Ok(first.auth.into_bytes()),
        Err(_) => Err(Denied::Malformed(
            r#"access control is on: the first line (binary: the first frame) must be {"auth": "TOKEN"}"#,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, token: &str, scopes: &[&str]) -> RawToken {
        RawToken {
            name: name.into(),
            sha256: digest_hex(token.as_bytes()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tokens_are_found_by_digest_and_admin_implies_every_scope() {
        let auth = Auth::new(
            &[
                raw("shop", "s3cret", &["ingest"]),
                raw("ops", "r00t", &["admin"]),
            ],
            true,
            false,
        )
        .unwrap();
        assert_eq!(
            auth.check(Some(b"s3cret"), Scope::Ingest).unwrap().name,
            "shop"
        );
        assert!(auth
            .check(Some(b"s3cret"), Scope::Query)
            .unwrap_err()
            .is_forbidden());
        assert_eq!(
            auth.check(Some(b"nope"), Scope::Ingest).unwrap_err(),
            Denied::Unknown
        );
        assert_eq!(
            auth.check(None, Scope::Ingest).unwrap_err(),
            Denied::Missing
        );
        for scope in [Scope::Ingest, Scope::Query, Scope::Admin] {
            assert_eq!(auth.check(Some(b"r00t"), scope).unwrap().name, "ops");
        }
    }

    #[test]
    fn bad_token_settings_say_which_token_and_why() {
        let mut bad_hex = raw("a", "x", &["ingest"]);
        bad_hex.sha256 = "abc".into();
        let cases = [
            (vec![bad_hex], "sha256"),
            (vec![raw("a", "x", &["write"])], "unknown scope \"write\""),
            (vec![raw("a", "x", &[])], "scopes is empty"),
            (
                vec![raw("a", "x", &["ingest"]), raw("a", "y", &["query"])],
                "used twice",
            ),
            (
                vec![raw("a", "x", &["ingest"]), raw("b", "x", &["query"])],
                "same sha256",
            ),
        ];
        for (tokens, want) in cases {
            let err = Auth::new(&tokens, true, true).unwrap_err();
            assert!(err.contains(want) && err.contains("token "), "{err}");
        }
    }

    #[test]
    fn bearer_and_basic_headers_carry_the_token() {
        assert_eq!(token_from_authorization(b"Bearer abc").unwrap(), b"abc");
        assert_eq!(token_from_authorization(b"bearer  abc ").unwrap(), b"abc");
        // Segment: base64("abc:")
        assert_eq!(token_from_authorization(b"Basic YWJjOg==").unwrap(), b"abc");
        assert_eq!(token_from_authorization(b"Basic YWJj").unwrap(), b"abc");
        assert!(token_from_authorization(b"Basic !!").is_err());
        assert!(token_from_authorization(b"Digest x").is_err());
        assert!(token_from_authorization(b"Bearer").is_err());
        assert_eq!(token_from_first_line(br#"{"auth":"abc"}"#).unwrap(), b"abc");
        assert!(token_from_first_line(br#"{"type":"track"}"#).is_err());
    }
}
