//! Where the BigQuery access token comes from.
//!
//! Production uses Google's own `google-cloud-auth`: a service-account key, or (preferred on
//! AWS) workload identity federation, an `external_account` configuration that exchanges the
//! Lambda role's AWS credentials for a short-lived Google token, with no long-lived secret
//! anywhere. Tokens are cached and refreshed by the library. Credentials are never logged: the
//! `Debug` output names the kind only.

use google_cloud_auth::credentials::{AccessTokenCredentials, external_account, service_account};

use crate::error::BqError;

/// The BigQuery OAuth scope.
pub const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// How requests are authorised.
#[derive(Clone)]
pub enum Auth {
    /// No `Authorization` header (emulators, test servers).
    None,
    /// A fixed bearer token (short-lived tokens handed in by a caller).
    Static(String),
    /// Google credentials, refreshed as needed, with the kind of document they came from.
    Google(AccessTokenCredentials, &'static str),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "Auth::None",
            Auth::Static(_) => "Auth::Static([redacted])",
            Auth::Google(..) => "Auth::Google([redacted])",
        })
    }
}

impl Auth {
    /// Credentials from a Google credential JSON document: `service_account` (a key) or
    /// `external_account` (workload identity federation, e.g. from AWS). Call it within a Tokio
    /// runtime: the token cache refreshes in a task of its own.
    pub fn from_credentials_json(json: &str) -> Result<Auth, BqError> {
        let context = "GCP credentials";
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| BqError::permanent(context, format!("not JSON: {e}")))?;
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned();
        // gcloud's `--enable-imdsv2` writes `credential_source.imdsv2_session_token_url`: the
        // library then asks the EC2 metadata endpoint for a session token before every
        // exchange, with no timeout. Lambda has no such endpoint (its AWS credentials are in
        // the environment), so every token fetch would hang or fail: refuse it at cold start.
        if kind == "external_account"
            && value
                .pointer("/credential_source/imdsv2_session_token_url")
                .is_some()
        {
            return Err(BqError::permanent(
                context,
                "credential_source.imdsv2_session_token_url is set: Lambda has no EC2 metadata endpoint to fetch an IMDSv2 session token from; write the configuration again without gcloud's --enable-imdsv2 flag",
            ));
        }
        let kind: &'static str = match kind.as_str() {
            "service_account" => "service_account",
            "external_account" => "external_account",
            _ => "other",
        };
        if kind == "service_account" {
            check_private_key(value.get("private_key").and_then(|k| k.as_str()))
                .map_err(|why| BqError::permanent(context, why))?;
        }
        let built = match kind {
            "service_account" => service_account::Builder::new(value)
                .with_access_specifier(service_account::AccessSpecifier::from_scopes([SCOPE]))
                .build_access_token_credentials(),
            "external_account" => external_account::Builder::new(value)
                .with_scopes([SCOPE])
                .build_access_token_credentials(),
            _ => {
                let other = value
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or_default();
                let other: String = other
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(40)
                    .collect();
                return Err(BqError::permanent(
                    context,
                    format!(
                        "type {other:?} is not supported: use a service_account key or an external_account (workload identity federation) configuration"
                    ),
                ));
            }
        };
        // The builder's message may quote the document; say what failed without it.
        built.map(|c| Auth::Google(c, kind)).map_err(|_| {
            BqError::permanent(
                context,
                format!("the {kind} credentials are incomplete or invalid"),
            )
        })
    }

    /// The `Authorization` header value, fetching or refreshing a token when needed.
    pub async fn header(&self) -> Result<Option<String>, BqError> {
        match self {
            Auth::None => Ok(None),
            Auth::Static(t) => Ok(Some(format!("Bearer {t}"))),
            Auth::Google(c, kind) => {
                let token = c.access_token().await.map_err(|e| {
                    // The library's text can quote the credential (a key it failed to parse):
                    // only a fixed message naming the kind and the likely cause leaves here.
                    let retryable = e.is_transient();
                    let message = match (*kind, retryable) {
                        (_, true) => format!("could not get a token with the {kind} credentials (a transient failure: retried)"),
                        ("service_account", false) => "the service_account key was refused: it may be malformed, revoked or for another project (check the private key and the client email)".to_owned(),
                        ("external_account", false) => "the external_account (workload identity federation) exchange was refused: check the pool provider's audience, the AWS role it trusts and the service account impersonation".to_owned(),
                        _ => format!("could not get a token with the {kind} credentials"),
                    };
                    let mut err = BqError::transport("GCP token", message);
                    if !retryable {
                        err.class = crate::error::ErrorClass::Permanent;
                    }
                    err
                })?;
                Ok(Some(format!("Bearer {}", token.token)))
            }
        }
    }
}

/// A service account's `private_key` as Google writes it: a PEM `PRIVATE KEY` block with real
/// newlines and base64 lines between its markers. Messages name the likely paste mistake and
/// never quote the key.
fn check_private_key(key: Option<&str>) -> Result<(), String> {
    let key = key.ok_or("the service_account key has no private_key")?;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let key = key.trim();
    if key.contains("\\n") && !key.contains('\n') {
        return Err("the private key's PEM is malformed: its newlines are escaped (\\n as two characters); paste the JSON file as Google wrote it".into());
    }
    if !key.starts_with(BEGIN) {
        return Err(if key.starts_with("-----BEGIN") {
            "the private key is not a PKCS#8 PRIVATE KEY block (another PEM type, e.g. a certificate or an RSA key): use the key file Google generated".into()
        } else {
            "the private key's PEM is malformed: it does not start with -----BEGIN PRIVATE KEY-----"
                .into()
        });
    }
    if !key.ends_with(END) {
        return Err("the private key's PEM is malformed: it does not end with -----END PRIVATE KEY----- (truncated?)".into());
    }
    let body = &key[BEGIN.len()..key.len() - END.len()];
    if !body.contains('\n') {
        return Err(
            "the private key's PEM is malformed: no line breaks (newlines lost when pasting?)"
                .into(),
        );
    }
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let valid = b64
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !valid || !b64.len().is_multiple_of(4) || b64.len() < 400 {
        return Err("the private key's PEM is malformed: its body is not a complete base64 key (truncated or edited?)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_and_broken_documents_are_permanent_errors_without_their_content() {
        let e =
            Auth::from_credentials_json(r#"{"type":"authorized_user","refresh_token":"s3cr3t"}"#)
                .unwrap_err();
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        let e = Auth::from_credentials_json("{not json").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
        let e = Auth::from_credentials_json(r#"{"type":"service_account","private_key":"s3cr3t"}"#)
            .unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
    }

    #[test]
    fn imdsv2_configuration_fails_naming_the_field_and_the_flag() {
        let config = r#"{
          "type": "external_account",
          "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/aws",
          "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
          "token_url": "https://sts.googleapis.com/v1/token",
          "credential_source": {
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
            "imdsv2_session_token_url": "http://169.254.169.254/latest/api/token"
          }
        }"#;
        let e = Auth::from_credentials_json(config).unwrap_err();
        let m = e.to_string();
        assert!(!e.is_retryable());
        assert!(
            m.contains("imdsv2_session_token_url") && m.contains("--enable-imdsv2"),
            "{m}"
        );
    }

    /// A service-account document around `key`; the key's body is base64 of bytes that are no
    /// key at all (so that only the structure is right).
    fn service_account(key: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "k",
            "private_key": key,
            "client_email": "ferry@p.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string()
    }

    const BODY_LINE: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDSECRETSECRET0";

    fn pem(lines: usize) -> String {
        let body: Vec<&str> = std::iter::repeat_n(BODY_LINE, lines).collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            body.join("\n")
        )
    }

    #[test]
    fn paste_mistakes_in_a_private_key_fail_with_the_likely_cause_and_no_key_material() {
        let escaped = pem(20).replace('\n', "\\n");
        let truncated = pem(20)[..600].to_owned();
        let certificate = pem(20).replace("PRIVATE KEY", "CERTIFICATE");
        let one_line = pem(20).replace('\n', "");
        for (key, cause) in [
            (escaped, "newlines are escaped"),
            (truncated, "truncated"),
            (certificate, "not a PKCS#8"),
            (one_line, "no line breaks"),
        ] {
            let e = Auth::from_credentials_json(&service_account(&key)).unwrap_err();
            let m = e.to_string();
            assert!(!e.is_retryable());
            assert!(m.contains(cause), "{m}");
            assert!(!m.contains("SECRET"), "key material in {m}");
        }
    }

    #[test]
    fn a_key_google_cannot_use_fails_its_token_without_quoting_the_library() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let auth = rt
            .block_on(async { Auth::from_credentials_json(&service_account(&pem(20))) })
            .unwrap();
        let e = rt.block_on(auth.header()).unwrap_err();
        let m = format!("{e} {e:?}");
        assert!(!m.contains("SECRET"), "key material in {m}");
        assert!(m.contains("service_account"), "{m}");
    }

    #[test]
    fn debug_never_shows_tokens() {
        let a = Auth::Static("ya29.secret".into());
        assert!(!format!("{a:?}").contains("secret"));
    }

    #[test]
    fn external_account_from_aws_builds() {
        // The configuration `gcloud iam workload-identity-pools create-cred-config --aws` writes.
        let config = r#"{
          "type": "external_account",
          "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/aws",
          "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
          "service_account_impersonation_url": "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/ferry@p.iam.gserviceaccount.com:generateAccessToken",
          "token_url": "https://sts.googleapis.com/v1/token",
          "credential_source": {
            "environment_id": "aws1",
            "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
            "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
            "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
          }
        }"#;
        // The token cache runs on the Tokio runtime, so credentials are built inside one.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let auth = rt
            .block_on(async { Auth::from_credentials_json(config) })
            .unwrap();
        assert!(matches!(auth, Auth::Google(..)));
    }
}
