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
    /// Google credentials, refreshed as needed.
    Google(AccessTokenCredentials),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "Auth::None",
            Auth::Static(_) => "Auth::Static([redacted])",
            Auth::Google(_) => "Auth::Google([redacted])",
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
        let built = match kind.as_str() {
            "service_account" => service_account::Builder::new(value)
                .with_access_specifier(service_account::AccessSpecifier::from_scopes([SCOPE]))
                .build_access_token_credentials(),
            "external_account" => external_account::Builder::new(value)
                .with_scopes([SCOPE])
                .build_access_token_credentials(),
            other => {
                return Err(BqError::permanent(
                    context,
                    format!(
                        "type {other:?} is not supported: use a service_account key or an external_account (workload identity federation) configuration"
                    ),
                ));
            }
        };
        // The builder's message may quote the document; say what failed without it.
        built.map(Auth::Google).map_err(|_| {
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
            Auth::Google(c) => {
                let token = c.access_token().await.map_err(|e| {
                    let retryable = e.is_transient();
                    let mut err = BqError::transport("GCP token", e.to_string());
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
        assert!(matches!(auth, Auth::Google(_)));
    }
}
