//! S3 as the pipeline's object store: `HeadObject` for the version, ranged `GetObject` reads
//! (the converter reads the footer, then row group by row group), `ListObjectsV2` for backfills.

use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use ferry_convert::RangeSource;
use ferry_pipeline::ports::{ObjectMeta, ObjectStore, PortError};
use tokio::runtime::Handle;

/// S3 through the AWS SDK. Methods block on `handle`: call them outside the runtime.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    handle: Handle,
}

impl S3Store {
    /// A store over `client`.
    pub fn new(client: Client, handle: Handle) -> S3Store {
        S3Store { client, handle }
    }
}

/// Whether an SDK failure is worth retrying: throttling, 5xx, timeouts and transport errors
/// are; access denied, missing buckets and malformed requests are not.
pub(crate) fn sdk_retryable<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            !matches!(
                code,
                "AccessDenied"
                    | "NoSuchBucket"
                    | "InvalidBucketName"
                    | "AllAccessDisabled"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidRange"
                    | "AWS.SimpleQueueService.NonExistentQueue"
                    | "QueueDoesNotExist"
                    | "InvalidParameterValue"
            )
        }
        _ => true,
    }
}

pub(crate) fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(s) => format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or_default()
        ),
        other => {
            let mut out = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                out.push_str(": ");
                out.push_str(&s.to_string());
                source = s.source();
            }
            out
        }
    }
}

fn port<E, R>(what: String, e: SdkError<E, R>) -> PortError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    PortError {
        message: format!("{what}: {}", describe(&e)),
        retryable: sdk_retryable(&e),
        later: false,
    }
}

impl ObjectStore for S3Store {
    fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectMeta>, PortError> {
        let result = self
            .handle
            .block_on(self.client.head_object().bucket(bucket).key(key).send());
        match result {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: out
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                etag: out.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                last_modified_micros: out
                    .last_modified()
                    .and_then(|t| t.to_millis().ok())
                    .map(|ms| ms * 1000),
            })),
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => Ok(None),
            // HEAD has no body to tell the cases apart: without s3:ListBucket on the prefix S3
            // answers 403 for a missing key too. Retrying cannot help either way.
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 403 => {
                Err(PortError::permanent(format!(
                    "HeadObject s3://{bucket}/{key}: 403 Forbidden: the object is missing (S3 answers 403 instead of 404 without s3:ListBucket on its prefix) or the loader's role may not read it"
                )))
            }
            Err(e) => Err(port(format!("HeadObject s3://{bucket}/{key}"), e)),
        }
    }

    fn open(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
    ) -> Result<Arc<dyn RangeSource>, PortError> {
        Ok(Arc::new(S3Object {
            client: self.client.clone(),
            handle: self.handle.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            etag: meta.etag.clone(),
            size: meta.size,
        }))
    }

    fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<ObjectMeta>, PortError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .handle
                .block_on(
                    self.client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(prefix)
                        .set_continuation_token(token.take())
                        .send(),
                )
                .map_err(|e| port(format!("ListObjectsV2 s3://{bucket}/{prefix}"), e))?;
            for o in page.contents() {
                out.push(ObjectMeta {
                    key: o.key().unwrap_or_default().to_owned(),
                    size: o.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                    etag: o.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                    last_modified_micros: o
                        .last_modified()
                        .and_then(|t| t.to_millis().ok())
                        .map(|ms| ms * 1000),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// One object version, read by ranged GETs. `If-Match` pins the version the load job id names:
/// an object replaced mid-read fails instead of mixing two versions.
struct S3Object {
    client: Client,
    handle: Handle,
    bucket: String,
    key: String,
    etag: String,
    size: u64,
}

impl RangeSource for S3Object {
    fn len(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let range = format!("bytes={}-{}", offset, offset + buf.len() as u64 - 1);
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .range(range);
        if !self.etag.is_empty() {
            request = request.if_match(format!("\"{}\"", self.etag));
        }
        let io = |m: String| std::io::Error::other(m);
        self.handle.block_on(async {
            let out = request.send().await.map_err(|e| {
                io(format!(
                    "GetObject s3://{}/{}: {}",
                    self.bucket,
                    self.key,
                    describe(&e)
                ))
            })?;
            let mut body = out.body;
            let mut filled = 0;
            while let Some(chunk) = body
                .try_next()
                .await
                .map_err(|e| io(format!("reading s3://{}/{}: {e}", self.bucket, self.key)))?
            {
                let n = chunk.len().min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&chunk[..n]);
                filled += n;
            }
            if filled != buf.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "s3://{}/{}: {} bytes at {offset}, got {filled}",
                        self.bucket,
                        self.key,
                        buf.len()
                    ),
                ));
            }
            Ok(())
        })
    }
}

/// Writes an object (reconcile's repair objects, which the bucket's notification then sends
/// through the loader like any DMS file).
pub async fn put_object(
    client: &Client,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .map(drop)
        .map_err(|e| {
            format!(
                "s3://{bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        })
}
