//! Secret newtypes: tokens, one-time passwords and client credentials.
//!
//! Every secret the proxy handles is wrapped in a type whose `Debug` prints `[redacted]` and which
//! has no `Display`, so a token cannot reach a log line or an error message by accident. The only
//! way to the text is `expose()`, which makes every use greppable.

macro_rules! secret_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The secret's text. Call only where it must leave the process (a PKB request,
            /// the `Location` of a redirect, the encrypted store).
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// The secret's text, taken out of its wrapper (as `expose`, where it leaves).
            pub fn into_exposed(self) -> String {
                self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }
    };
}

secret_type!(
    /// An OAuth access token for PKB's API.
    AccessToken
);
secret_type!(
    /// An OAuth refresh token; single use when PKB rotates it.
    RefreshToken
);
secret_type!(
    /// A PKB one-time password: single use, 60 s, only ever placed in a `Location` header.
    Otp
);
secret_type!(
    /// The URL that logs a browser into PKB: it carries a one-time password.
    OtpLoginUrl
);
secret_type!(
    /// The OAuth client secret pkb-edge authenticates to PKB with.
    ClientSecret
);
secret_type!(
    /// A PKCE code verifier (RFC 7636): whoever holds it can redeem the pairing's code.
    CodeVerifier
);
secret_type!(
    /// Raw key material text (e.g. the `store.keys` lines) before it is parsed.
    SecretText
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let token = AccessToken::new("very-secret-access-token");
        let shown = format!("{token:?} {:?}", Some(RefreshToken::new("rt-123")));
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains("rt-123"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
