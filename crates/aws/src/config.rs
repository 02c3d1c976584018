//! AWS SDK clients from the environment: the standard credential chain and region, and the
//! standard endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL_DYNAMODB`)
//! for stand-ins. With an S3 endpoint override, path-style addressing is used (moto, MinIO).

use aws_config::BehaviorVersion;
pub use aws_config::SdkConfig;

/// Shared SDK configuration from the environment.
pub async fn load() -> aws_config::SdkConfig {
    load_with(None, None).await
}

/// Shared SDK configuration from the environment, with the region and the named profile given
/// on the command line (`--region`, `--profile`) taking precedence.
pub async fn load_with(region: Option<&str>, profile: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    loader.load().await
}

/// An S3 client; path-style when an endpoint override is set.
pub fn s3(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let overridden = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some();
    let s3 = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(overridden)
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// An SQS client.
pub fn sqs(config: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(config)
}

/// A DynamoDB client.
pub fn dynamodb(config: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}

/// A Secrets Manager client.
pub fn secrets(config: &aws_config::SdkConfig) -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(config)
}

/// A secret's string value (the GCP credential JSON), never logged.
pub async fn secret_string(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<String, String> {
    let out = client
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| format!("GetSecretValue {secret_id}: {}", crate::s3::describe(&e)))?;
    out.secret_string()
        .map(str::to_owned)
        .ok_or_else(|| format!("secret {secret_id} has no string value"))
}
