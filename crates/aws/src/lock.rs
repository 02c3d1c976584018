//! The replica apply lock on DynamoDB: one item per locked name, taken with a conditional write.
//!
//! `try_acquire` is one `PutItem` with the condition "no item, or its lease expired, or it is
//! mine" (DynamoDB evaluates a condition and the write atomically, "Condition expressions" in the
//! DynamoDB Developer Guide); a failed condition answers `ConditionalCheckFailedException`,
//! which means someone else holds the lock. `release` is a `DeleteItem` conditioned on the owner,
//! so a holder whose lease expired and was taken over cannot delete the new holder's lock.
//!
//! Items: `name` (partition key, string), `owner` (string), `expires_at` (number, seconds since
//! the epoch; also the table's TTL attribute, so DynamoDB deletes stale items on its own).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;
use ferry_pipeline::ports::{ApplyLock, PortError};
use tokio::runtime::Handle;

use crate::s3::{describe, sdk_retryable};

/// The lock table's partition key.
pub const KEY: &str = "name";

/// A lock table in DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoDbLock {
    client: Client,
    handle: Handle,
    table: String,
}

impl DynamoDbLock {
    /// Locks are items of `table`.
    pub fn new(client: Client, handle: Handle, table: impl Into<String>) -> DynamoDbLock {
        DynamoDbLock {
            client,
            handle,
            table: table.into(),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ApplyLock for DynamoDbLock {
    fn try_acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool, PortError> {
        let now = now_secs();
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, AttributeValue::S(name.to_owned()))
            .item("owner", AttributeValue::S(owner.to_owned()))
            .item(
                "expires_at",
                AttributeValue::N((now + ttl.as_secs().max(1)).to_string()),
            )
            .condition_expression("attribute_not_exists(#k) OR expires_at < :now OR #o = :me")
            .expression_attribute_names("#k", KEY)
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()));
        match self.handle.block_on(request.send()) {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(PortError {
                message: format!("lock {name} in {}: {}", self.table, describe(&e)),
                retryable: sdk_retryable(&e),
                later: false,
            }),
        }
    }

    fn release(&self, name: &str, owner: &str) -> Result<(), PortError> {
        let request = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(KEY, AttributeValue::S(name.to_owned()))
            .condition_expression("#o = :me")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()));
        match self.handle.block_on(request.send()) {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(PortError {
                message: format!("unlock {name} in {}: {}", self.table, describe(&e)),
                retryable: sdk_retryable(&e),
                later: false,
            }),
        }
    }
}
