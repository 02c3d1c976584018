//! Tables.
//!
//! Created with DDL (`CREATE TABLE IF NOT EXISTS`, see [`ferry_core::sql`]) before the first
//! load; new source columns are added with `ALTER TABLE ... ADD COLUMN IF NOT EXISTS`; a column
//! whose type differs from the table's is a permanent error naming both types. Columns are never
//! dropped or narrowed. A replica's live view (`<replica>_live`, see [`ferry_core::sql::live_view`])
//! is replaced whenever the replica gains columns.
//!
//! Guarantees: every load names the destination's whole schema (so DATETIME and TIME load
//! from parquet); a column's type is never narrowed or changed; all columns a file adds cost one
//! `ALTER TABLE` per table; a change log never gets a JSON column.

use super::*;

pub(super) fn ddl_error(e: sql::DdlError) -> BqError {
    BqError::permanent(format!("table {}", e.table), e.message)
}

/// The load job configuration for a converted file, with the destination's whole schema.
///
/// BigQuery maps a parquet TIMESTAMP only to TIMESTAMP unless the load names the column's type
/// (page "Loading Parquet data", section "Parquet conversions"): without `schema`, wall-clock
/// timestamps bound for a DATETIME column fail with "changed type from DATETIME to TIMESTAMP".
/// The schema is the table's (every column, in table order), not the file's: a load schema
/// lacking a table column is refused ("Field x is missing in new schema").
pub fn load_configuration(request: &LoadRequest<'_>, table_schema: &TableSchema) -> Value {
    let t = &request.table.changelog;
    let fields: Vec<Value> = table_schema
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "type": f.bq_type.as_str(),
                "mode": match f.mode { FieldMode::Required => "REQUIRED", FieldMode::Nullable => "NULLABLE" },
            })
        })
        .collect();
    json!({
        "load": {
            "destinationTable": { "projectId": t.project, "datasetId": t.dataset, "tableId": t.table },
            "sourceFormat": "PARQUET",
            "writeDisposition": "WRITE_APPEND",
            "createDisposition": "CREATE_NEVER",
            "schema": { "fields": fields },
            "schemaUpdateOptions": ["ALLOW_FIELD_ADDITION"],
            "parquetOptions": { "enableListInference": true, "enumAsString": true },
            "decimalTargetTypes": ["NUMERIC", "BIGNUMERIC", "STRING"],
        },
        // Enough to attribute a job without reading its configuration (INFORMATION_SCHEMA.JOBS
        // has `labels`): source, table, the object (a stable hash of bucket and key) and the
        // attempt, which `load_exactly_once` sets per job id. BigQuery's label rules ("Adding
        // labels to resources", Requirements): at most 64 per resource; keys and values at most
        // 63 characters of lower-case letters, digits, `_` and `-`; keys start with a letter.
        "labels": {
            "ferry_source": label(&request.source.name),
            "ferry_table": label(&request.table.source_table()),
            "ferry_key": key_label(request.bucket, &request.object.key),
            "ferry_attempt": request.job_id.attempt().to_string(),
        },
    })
}

/// The `ferry_key` label: FNV-1a (64 bits) of `bucket/key`, in hex; the same on every machine.
pub fn key_label(bucket: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bucket
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(key.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("k{h:016x}")
}

/// A `TableSchema` from the REST API's `schema.fields`.
pub fn schema_from_json(table: &TableRef, fields: &Value) -> Result<TableSchema, BqError> {
    let context = format!("schema of {table}");
    let list = fields
        .as_array()
        .ok_or_else(|| BqError::malformed(&context, "schema.fields is not a list"))?;
    let mut out = Vec::with_capacity(list.len());
    for f in list {
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let type_name = f.get("type").and_then(Value::as_str).unwrap_or_default();
        let bq_type = ferry_core::bqtype::BqType::parse(type_name).ok_or_else(|| {
            BqError::permanent(
                &context,
                format!("column {name} has type {type_name}, which ferry does not write"),
            )
        })?;
        let mode = match f.get("mode").and_then(Value::as_str).unwrap_or("NULLABLE") {
            "REQUIRED" => FieldMode::Required,
            "NULLABLE" => FieldMode::Nullable,
            other => {
                return Err(BqError::permanent(
                    &context,
                    format!("column {name} has mode {other}, which ferry does not write"),
                ));
            }
        };
        out.push(BqField {
            name: name.to_owned(),
            bq_type,
            mode,
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    Ok(TableSchema { fields: out })
}

/// Columns of `wanted` missing from `actual`; a column present in both with another type is a
/// permanent error naming the column and both types.
pub fn missing_columns(
    table: &TableRef,
    actual: &TableSchema,
    wanted: &[BqField],
) -> Result<Vec<BqField>, BqError> {
    let mut missing = Vec::new();
    for w in wanted {
        match actual
            .fields
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(&w.name))
        {
            Some(a) if a.bq_type != w.bq_type => {
                // The file was converted against an older picture of the table (another file
                // of its batch created the column); converted again on its next delivery, it
                // follows the table's `on_type_change`.
                return Err(BqError {
                    class: ErrorClass::Retryable,
                    ..BqError::permanent(
                        format!("table {table}"),
                        format!(
                            "column {} is {} in BigQuery but {} in the file; the file is converted again against the table on its next delivery (a type change continues as {}__{} unless the table's on_type_change is stop)",
                            w.name,
                            a.bq_type,
                            w.bq_type,
                            w.name,
                            w.bq_type.as_str().to_ascii_lowercase()
                        ),
                    )
                });
            }
            Some(_) => {}
            None => missing.push(BqField {
                mode: FieldMode::Nullable,
                ..w.clone()
            }),
        }
    }
    Ok(missing)
}

impl BigQueryWarehouse {
    pub(super) async fn fetch_schema(
        &self,
        table: &TableRef,
    ) -> Result<Option<TableSchema>, BqError> {
        match self
            .client
            .get_table_fields(&table.project, &table.dataset, &table.table)
            .await?
        {
            Some(fields) => schema_from_json(table, &fields).map(Some),
            None => Ok(None),
        }
    }

    /// Creates or widens the change log (and the replica) so that the file's columns fit.
    pub(super) async fn prepare_tables(&self, request: &LoadRequest<'_>) -> Result<(), BqError> {
        let table = request.table;
        let location = request.source.location.as_deref();
        let cached = self.cached_schema(&table.changelog);
        let wanted = &request.schema.fields;
        let actual = match cached {
            Some(s) => s,
            None => {
                self.client
                    .ensure_dataset(&table.changelog.project, &table.changelog.dataset, location)
                    .await?;
                let ddl = sql::create_changelog(table, request.schema).map_err(ddl_error)?;
                self.run(&ddl, location, "ddl").await?;
                self.fetch_schema(&table.changelog).await?.ok_or_else(|| {
                    BqError::transport(
                        format!("table {}", table.changelog),
                        "created, but not visible yet",
                    )
                })?
            }
        };
        let missing = missing_columns(&table.changelog, &actual, wanted)?;
        if !missing.is_empty() {
            tracing::info!(table = %table.changelog, columns = missing.len(), "adding columns");
        }
        if let Some(alter) = sql::add_columns(&table.changelog, &missing) {
            self.run(&alter, location, "ddl").await?;
        }
        let mut schema = actual;
        schema.fields.extend(missing.iter().cloned());
        if let Some(replica) = &table.replica {
            let ready = self
                .replicas_ready
                .lock()
                .map(|r| r.contains(replica))
                .unwrap_or(false);
            if ready {
                if let Some(alter) = sql::add_columns(replica, &sql::in_replica(table, &missing)) {
                    self.run(&alter, location, "ddl").await?;
                }
            } else {
                // Once per process: the replica (and its run and tombstone tables) exist with
                // every change-log column, also after a mode switch or an addition interrupted
                // half way.
                let tombstones = sql::tombstones_of(replica);
                let has_sides = self.fetch_schema(&sql::runs_of(replica)).await?.is_some()
                    && (table.soft_delete || self.fetch_schema(&tombstones).await?.is_some());
                match self.fetch_schema(replica).await? {
                    Some(actual) if has_sides => {
                        let wanted = sql::replica_fields(table, &schema);
                        let lacking = missing_columns(replica, &actual, &wanted)?;
                        if let Some(alter) = sql::add_columns(replica, &lacking) {
                            self.run(&alter, location, "ddl").await?;
                        }
                    }
                    _ => {
                        for ddl in sql::create_replica(table, &schema).map_err(ddl_error)? {
                            self.run(&ddl, location, "ddl").await?;
                        }
                    }
                }
                self.create_live_view(table, &schema, location).await?;
                if let Ok(mut r) = self.replicas_ready.lock() {
                    r.insert(replica.clone());
                }
            }
            if ready && !missing.is_empty() {
                // The view lists the replica's columns: new ones join it.
                self.create_live_view(table, &schema, location).await?;
            }
        }
        if let Ok(mut s) = self.schemas.lock() {
            s.insert(table.changelog.clone(), schema);
        }
        Ok(())
    }

    /// `CREATE OR REPLACE VIEW <replica>_live` over the replica and `schema` (the change log's).
    async fn create_live_view(
        &self,
        table: &TableMapping,
        schema: &TableSchema,
        location: Option<&str>,
    ) -> Result<(), BqError> {
        let every = table.apply_every.unwrap_or(self.options.apply_every);
        if let Some(ddl) = sql::live_view(table, schema, sql::live_lookback(every)) {
            self.run(&ddl, location, "ddl").await?;
        }
        Ok(())
    }

    /// The load configuration for `request`, with the change log's schema as
    /// [`Self::prepare_tables`] left it (the file's own columns before that).
    pub(super) fn configuration_for(&self, request: &LoadRequest<'_>) -> Value {
        let schema = self
            .cached_schema(&request.table.changelog)
            .unwrap_or_else(|| request.schema.clone());
        load_configuration(request, &schema)
    }

    /// A load refused because its schema lacks a column another writer added meanwhile
    /// ("Field x is missing in new schema"): the cached schema is stale. It is dropped and the
    /// load retried (read afresh next time); any other error is returned as it is.
    pub(super) fn stale_schema(&self, table: &TableRef, e: BqError) -> BqError {
        if !e.message.contains("is missing in new schema") {
            return e;
        }
        if let Ok(mut s) = self.schemas.lock() {
            s.remove(table);
        }
        BqError {
            class: ErrorClass::Retryable,
            ..e
        }
    }

    pub(super) fn cached_schema(&self, table: &TableRef) -> Option<TableSchema> {
        self.schemas.lock().ok().and_then(|s| s.get(table).cloned())
    }
}
