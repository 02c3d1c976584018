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
use ferry_pipeline::ports::{ApplyLock, PendingSets, PortError};
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

/// How long a pending set outlives its last addition (SQS keeps messages as long).
const PENDING_KEEP: Duration = Duration::from_secs(14 * 24 * 3600);

/// Work waiting for a table's next slot, in the same DynamoDB table as the locks: one item per
/// set (`name` = `ferry-pending/<set>`), its items a string set (`items`). `add` is an
/// `UpdateItem` `ADD` (atomic, creates the item), `remove` an `UpdateItem` `DELETE` of the same
/// strings (page "Update expressions" in the DynamoDB Developer Guide); `read` is a strongly
/// consistent `GetItem`. An item holds at most 400 KB (page "Service, account, and table
/// quotas"), about a thousand waiting files: beyond that `add` fails and the handler sends the
/// files back to the queue instead.
#[derive(Debug, Clone)]
pub struct DynamoDbPending {
    client: Client,
    handle: Handle,
    table: String,
}

impl DynamoDbPending {
    /// Pending sets are items of `table` (the lock table).
    pub fn new(client: Client, handle: Handle, table: impl Into<String>) -> DynamoDbPending {
        DynamoDbPending {
            client,
            handle,
            table: table.into(),
        }
    }

    fn item(name: &str) -> AttributeValue {
        AttributeValue::S(format!("ferry-pending/{name}"))
    }

    fn error(&self, what: &str, name: &str, retryable: bool, text: String) -> PortError {
        PortError {
            message: format!("{what} pending set {name} in {}: {text}", self.table),
            retryable,
            later: false,
        }
    }
}

impl DynamoDbPending {
    /// One `UpdateItem` of the set's `items` attribute with `expression` (`:i` the items).
    fn update(
        &self,
        what: &str,
        name: &str,
        expression: &str,
        items: &[String],
    ) -> Result<(), PortError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, DynamoDbPending::item(name))
            .update_expression(expression)
            .expression_attribute_names("#i", "items")
            .expression_attribute_values(":i", AttributeValue::Ss(items.to_vec()));
        if expression.contains(":exp") {
            request = request.expression_attribute_values(
                ":exp",
                AttributeValue::N((now_secs() + PENDING_KEEP.as_secs()).to_string()),
            );
        }
        self.handle
            .block_on(request.send())
            .map(|_| ())
            .map_err(|e| self.error(what, name, sdk_retryable(&e), describe(&e)))
    }
}

impl PendingSets for DynamoDbPending {
    fn add(&self, name: &str, items: &[String]) -> Result<(), PortError> {
        self.update("add to", name, "ADD #i :i SET expires_at = :exp", items)
    }

    fn read(&self, name: &str) -> Result<Vec<String>, PortError> {
        let request = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, DynamoDbPending::item(name))
            .consistent_read(true);
        let out = self
            .handle
            .block_on(request.send())
            .map_err(|e| self.error("read", name, sdk_retryable(&e), describe(&e)))?;
        Ok(match out.item().and_then(|i| i.get("items")) {
            Some(AttributeValue::Ss(set)) => set.clone(),
            _ => Vec::new(),
        })
    }

    fn remove(&self, name: &str, items: &[String]) -> Result<(), PortError> {
        self.update("remove from", name, "DELETE #i :i", items)
    }
}
