//! The OpenAPI 3 document of `/api/v1`, served at `/api/v1/openapi.json`.
//!
//! [`OPERATIONS`] is the list of routes with their documentation; a test
//! checks it against the routes registered in `routes/mod.rs`.

use axum::Json;
use serde_json::{json, Map, Value};

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    /// The path under `/api/v1`, with `{param}` segments.
    pub path: &'static str,
    pub summary: &'static str,
    /// `none`, `optional` or `required`.
    pub auth: &'static str,
    /// Query parameters: (name, type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Request body schema reference or inline kind: `""`, `json:<Schema>`, `multipart`.
    pub body: &'static str,
    /// Success status and schema reference (`""` for a file download).
    pub ok: (u16, &'static str),
}

pub const OPERATIONS: &[Operation] = &[
    Operation { method: "get", path: "/openapi.json", summary: "This document", auth: "none", query: &[], body: "", ok: (200, "") },
    Operation { method: "get", path: "/me", summary: "The signed-in account", auth: "required", query: &[], body: "", ok: (200, "Me") },
    Operation { method: "post", path: "/users", summary: "Create an account (administrators); the answer holds its API token", auth: "required", query: &[], body: "json:NewUser", ok: (201, "NewUserToken") },
        Operation { method: "get", path: "/ledger/key", summary: "The ledger's origin and verifier key (C2SP vkey)", auth: "none", query: &[], body: "", ok: (200, "LedgerKey") },
    Operation { method: "get", path: "/ledger/entries", summary: "Ledger entries, decoded", auth: "none", query: &[("from", "integer", "first index"), ("limit", "integer", "1 to 1000, default 100"), ("subject", "string", "only entries about contribution:<id>, datanet:<name> or run:<id>")], body: "", ok: (200, "LedgerEntries") },
    Operation { method: "get", path: "/ledger/entries/{index}", summary: "One ledger entry: leaf bytes (base64), leaf hash and decoded event", auth: "none", query: &[], body: "", ok: (200, "LedgerEntry") },
    Operation { method: "get", path: "/ledger/proof/inclusion", summary: "Inclusion proof of entry `index` in the tree of `size` entries (default: current size)", auth: "none", query: &[("index", "integer", "entry index"), ("size", "integer", "tree size")], body: "", ok: (200, "InclusionProof") },
    Operation { method: "get", path: "/ledger/proof/consistency", summary: "Consistency proof between tree sizes `old` and `new` (default: current size)", auth: "none", query: &[("old", "integer", "older tree size"), ("new", "integer", "newer tree size")], body: "", ok: (200, "ConsistencyProof") },
    Operation { method: "get", path: "/leaderboard", summary: "Global leaderboard over published datanets", auth: "none", query: &[], body: "", ok: (200, "Leaderboard") },
    Operation { method: "get", path: "/datanets", summary: "List datanets you can see", auth: "optional", query: &[("q", "string", "search in name and summary"), ("tag", "string", "only datanets with this tag")], body: "", ok: (200, "DatanetList") },
    Operation { method: "post", path: "/datanets", summary: "Create a datanet from a TOML policy", auth: "required", query: &[], body: "json:NewDatanet", ok: (201, "Datanet") },
    Operation { method: "get", path: "/datanets/{name}", summary: "A datanet: policy, versions, counts, your role and quota", auth: "optional", query: &[], body: "", ok: (200, "Datanet") },
    Operation { method: "patch", path: "/datanets/{name}", summary: "Edit a datanet (owner); after publishing only summary, description and tags", auth: "required", query: &[], body: "json:DatanetPatch", ok: (200, "Datanet") },
    Operation { method: "post", path: "/datanets/{name}/publish", summary: "Publish a datanet (owner)", auth: "required", query: &[], body: "", ok: (200, "Datanet") },
    Operation { method: "put", path: "/datanets/{name}/curators/{user}", summary: "Name a curator (owner)", auth: "required", query: &[], body: "", ok: (200, "RoleChange") },
    Operation { method: "delete", path: "/datanets/{name}/curators/{user}", summary: "Remove a curator (owner)", auth: "required", query: &[], body: "", ok: (200, "RoleChange") },
    Operation { method: "get", path: "/datanets/{name}/versions", summary: "Every version, oldest first", auth: "optional", query: &[], body: "", ok: (200, "VersionList") },
    Operation { method: "get", path: "/datanets/{name}/versions/{number}", summary: "One version", auth: "optional", query: &[], body: "", ok: (200, "Version") },
    Operation { method: "get", path: "/datanets/{name}/rows", summary: "Accepted rows of a version (default: latest)", auth: "optional", query: &[("version", "integer", "version number"), ("offset", "integer", "first row"), ("limit", "integer", "1 to 1000, default 100"), ("q", "string", "case-insensitive text search")], body: "", ok: (200, "RowPage") },
    Operation { method: "get", path: "/datanets/{name}/export", summary: "All rows of a version as JSONL or parquet", auth: "optional", query: &[("version", "integer", "version number (default: latest)"), ("format", "string", "jsonl (default) or parquet")], body: "", ok: (200, "") },
    Operation { method: "get", path: "/datanets/{name}/leaderboard", summary: "Leaderboard of one datanet", auth: "optional", query: &[], body: "", ok: (200, "Leaderboard") },
    Operation { method: "post", path: "/datanets/{name}/contributions", summary: "Upload files (multipart `file` parts); every file gets a verdict. `dry_run=true` stores and counts nothing", auth: "required", query: &[("dry_run", "boolean", "check only")], body: "multipart", ok: (201, "VerdictList") },
    Operation { method: "get", path: "/datanets/{name}/contributions", summary: "Contributions you may see (owner and curators: all; contributors: accepted and their own; public: accepted)", auth: "optional", query: &[("status", "string", "accepted, pending or rejected"), ("contributor", "string", "user name"), ("offset", "integer", "skip"), ("limit", "integer", "1 to 1000")], body: "", ok: (200, "ContributionList") },
    Operation { method: "get", path: "/datanets/{name}/contributions/{id}", summary: "One contribution", auth: "optional", query: &[], body: "", ok: (200, "Contribution") },
    Operation { method: "get", path: "/datanets/{name}/contributions/{id}/file", summary: "The contributed file (kept when accepted or pending)", auth: "optional", query: &[], body: "", ok: (200, "") },
    Operation { method: "post", path: "/datanets/{name}/contributions/{id}/approve", summary: "Approve a pending contribution (owner or curator, not your own)", auth: "required", query: &[], body: "", ok: (200, "Verdict") },
    Operation { method: "post", path: "/datanets/{name}/contributions/{id}/reject", summary: "Reject a pending contribution with a reason (owner or curator, not your own)", auth: "required", query: &[], body: "json:Rejection", ok: (200, "Verdict") },
    Operation { method: "post", path: "/runs", summary: "Queue a training run (LoRA / QLoRA) on datanet versions you can read or on rows you send; the server's worker trains it", auth: "required", query: &[], body: "json:NewRun", ok: (201, "Run") },
    Operation { method: "get", path: "/runs", summary: "Your training runs, newest first", auth: "required", query: &[("offset", "integer", "skip"), ("limit", "integer", "1 to 1000, default 100"), ("all", "boolean", "administrators: everybody's runs")], body: "", ok: (200, "RunList") },
    Operation { method: "get", path: "/runs/{id}", summary: "One run: status, settings, summary", auth: "required", query: &[], body: "", ok: (200, "Run") },
    Operation { method: "post", path: "/runs/{id}/stop", summary: "Stop a run: a queued one at once (200), a running one after its step with a final checkpoint (202)", auth: "required", query: &[], body: "", ok: (202, "Run") },
    Operation { method: "post", path: "/runs/{id}/resume", summary: "Queue a stopped, interrupted or failed run again; it continues from its newest checkpoint", auth: "required", query: &[], body: "", ok: (202, "Run") },
    Operation { method: "post", path: "/runs/{id}/publish", summary: "Publish a finished run's adapter: its SHA-256, base and datanet versions go on the ledger (adapter.published); an optional body sets its prices per 1,000 input and output tokens (credits, default 0)", auth: "required", query: &[], body: "json:PublishPrices", ok: (200, "Run") },
    Operation { method: "get", path: "/accounts/{name}/balance", summary: "Your balance (administrators: anyone's): earnings and spending from priced answers (credits; reward.paid leaves on the ledger), allowance, credit held by running requests, and what can still be spent; another user's is 404 like a missing one", auth: "required", query: &[], body: "", ok: (200, "Balance") },
    Operation { method: "get", path: "/tokens", summary: "The caller's API tokens: id (first 12 hex digits of the token's SHA-256), label, created, expires, revoked, active; never the tokens", auth: "required", query: &[], body: "", ok: (200, "TokenList") },
    Operation { method: "post", path: "/tokens", summary: "A further API token for the caller (shown once), with an optional label and expiry in days", auth: "required", query: &[], body: "json:NewToken", ok: (201, "NewTokenAnswer") },
    Operation { method: "delete", path: "/tokens/{id}", summary: "Revoke one of the caller's tokens (by id, or the token itself); it stops working at once", auth: "required", query: &[], body: "", ok: (200, "Token") },
    Operation { method: "put", path: "/accounts/{name}/allowance", summary: "Administrators: how far below zero an account may spend on priced answers (credits, default 0); a priced call that could cost more than balance + allowance - held answers 402", auth: "required", query: &[], body: "json:Allowance", ok: (200, "Balance") },
    Operation { method: "get", path: "/runs/{id}/events", summary: "Live metrics as server-sent events: `step`, `eval`, `checkpoint` (id = line of metrics.jsonl, data = the line), `status` on every change, a last `end` with the run. Reconnect with Last-Event-ID", auth: "required", query: &[("after", "integer", "skip the first N metric lines")], body: "", ok: (200, "sse") },
    Operation { method: "get", path: "/models", summary: "Base models the training worker can use, with their shapes (for estimates)", auth: "required", query: &[], body: "", ok: (200, "ModelList") },
    Operation { method: "get", path: "/runs/{id}/files/{name}", summary: "A file of the run: adapter_config.json, adapter_model.safetensors (the newest adapter, PEFT format) or metrics.jsonl", auth: "required", query: &[], body: "", ok: (200, "") },
];

fn schemas() -> Value {
    let s = |t: &str| json!({ "type": t });
    let reason = json!({
        "type": "object",
        "required": ["gate", "metric", "value", "threshold", "message"],
        "properties": {
            "gate": s("string"), "metric": s("string"), "value": {}, "threshold": {},
            "message": s("string"), "row": s("integer")
        }
    });
    let standing = json!({
        "type": "object",
        "properties": {
            "rank": s("integer"), "contributor": s("string"), "accepted": s("integer"), "rejected": s("integer"),
            "submitted": s("integer"), "acceptance_rate": s("number"), "active_days": s("integer"), "score": s("number"),
            "earned": s("number")
        }
    });
    let version = json!({
        "type": "object",
        "properties": {
            "number": s("integer"), "row_count": s("integer"), "byte_count": s("integer"),
            "root": { "type": "string", "description": "RFC 9162 Merkle root over the rows, hex" },
            "contribution_id": s("integer"), "created_at": s("integer")
        }
    });
    let contribution = json!({
        "type": "object",
        "properties": {
            "id": s("integer"), "datanet": s("string"), "contributor": s("string"), "filename": s("string"),
            "format": s("string"), "bytes": s("integer"), "sha256": s("string"),
            "status": { "type": "string", "enum": ["accepted", "pending", "rejected"] },
            "reasons": { "type": "array", "items": { "$ref": "#/components/schemas/Reason" } },
            "score": s("number"), "rows": s("integer"), "submitted_at": s("integer"), "decided_at": s("integer"),
            "reviewer": s("string"), "review_reason": s("string"), "version": s("integer")
        }
    });
    let verdict = json!({
        "type": "object",
        "required": ["file", "status", "contribution_id", "score", "reasons"],
        "properties": {
            "file": s("string"), "status": { "type": "string", "enum": ["accepted", "pending", "rejected"] },
            "contribution_id": { "type": ["integer", "null"] }, "score": s("number"), "rows": s("integer"),
            "version": { "type": ["integer", "null"] },
            "reasons": { "type": "array", "items": { "$ref": "#/components/schemas/Reason" } },
            "dry_run": s("boolean")
        }
    });
    let datanet = json!({
        "type": "object",
        "properties": {
            "name": s("string"), "owner": s("string"), "kind": { "type": "string", "enum": ["text", "image", "audio"] },
            "summary": s("string"), "description": s("string"), "tags": { "type": "array", "items": s("string") },
            "published": s("boolean"), "policy": s("object"), "policy_hash": s("string"), "stats": s("object"),
            "versions": { "type": "array", "items": { "$ref": "#/components/schemas/Version" } },
            "curators": { "type": "array", "items": s("string") }, "your_role": s("string"), "your_quota": s("object")
        }
    });
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "object", "required": ["code", "message", "details"],
                "properties": { "code": s("string"), "message": s("string"), "details": {} } } }
        },
        "Reason": reason,
        "Standing": standing,
        "Leaderboard": { "type": "array", "items": { "$ref": "#/components/schemas/Standing" } },
        "Version": version,
        "VersionList": { "type": "array", "items": { "$ref": "#/components/schemas/Version" } },
        "Contribution": contribution,
        "ContributionList": { "type": "array", "items": { "$ref": "#/components/schemas/Contribution" } },
        "Verdict": verdict,
        "VerdictList": { "type": "array", "items": { "$ref": "#/components/schemas/Verdict" } },
        "Datanet": datanet,
        "DatanetList": { "type": "array", "items": s("object") },
        "RowPage": { "type": "object", "properties": { "version": s("integer"), "row_count": s("integer"), "offset": s("integer"),
            "rows": { "type": "array", "items": { "type": "object", "properties": {
                "index": s("integer"), "contribution_id": s("integer"), "contributor": s("string"), "content": s("object"),
                "score": s("number"), "near_duplicate": s("boolean") } } } } },
        "Me": { "type": "object", "properties": { "name": s("string"), "admin": s("boolean"), "created_at": s("integer") } },
        "NewUser": { "type": "object", "required": ["name"], "properties": { "name": s("string"), "admin": s("boolean") } },
        "NewUserToken": { "type": "object", "properties": { "name": s("string"), "admin": s("boolean"), "token": s("string") } },
        "NewDatanet": { "type": "object", "required": ["name"], "properties": {
            "name": s("string"), "policy": { "type": "string", "description": "the policy file, TOML" },
            "json_schema": { "type": "string", "description": "contents of the schema file the policy names in gates.json_schema" },
            "summary": s("string"), "description": s("string"), "tags": { "type": "array", "items": s("string") }, "publish": s("boolean") } },
        "DatanetPatch": { "type": "object", "properties": {
            "summary": s("string"), "description": s("string"), "tags": { "type": "array", "items": s("string") },
            "policy": s("string"), "json_schema": s("string") } },
        "RoleChange": { "type": "object", "properties": { "datanet": s("string"), "user": s("string"), "role": s("string") } },
                "Rejection": { "type": "object", "required": ["reason"], "properties": { "reason": s("string") } },
        "NewRun": { "type": "object", "required": ["base"], "description": "merit train's settings under their flag names with `_` for `-`; all but base have the CLI's defaults", "properties": {
            "base": { "type": "string", "description": "a model registered on the server, a folder or a GGUF file there" },
            "datanets": { "type": "array", "items": s("string"), "description": "NAME or NAME@VERSION" },
            "rows": { "type": "array", "items": s("object"), "description": "rows in text, alpaca, sharegpt or messages form" },
            "method": { "type": "string", "enum": ["lora", "qlora"] }, "rank": s("integer"), "alpha": s("number"),
            "dropout": s("number"), "rslora": s("boolean"), "targets": { "type": "array", "items": s("string") },
            "lr": s("number"), "scheduler": { "type": "string", "enum": ["constant", "linear", "cosine"] },
            "warmup": s("number"), "epochs": s("number"), "max_steps": s("integer"), "batch": s("integer"),
            "grad_accum": s("integer"), "weight_decay": s("number"), "max_grad_norm": s("number"),
            "eval_every": s("integer"), "save_every": s("integer"), "seed": s("integer"),
            "data": { "type": "object", "properties": { "cutoff_len": s("integer"), "packing": s("boolean"),
                "train_on_prompt": s("boolean"), "last_turn_only": s("boolean"), "eval_split": s("number") } } } },
        "Run": { "type": "object", "properties": { "id": s("integer"), "owner": s("string"),
            "status": { "type": "string", "enum": ["queued", "running", "done", "stopped", "failed", "interrupted"] },
            "config": s("object"), "stop_requested": s("boolean"), "summary": s("object"), "error": s("string"),
            "created_at": s("integer"), "started_at": s("integer"), "finished_at": s("integer"),
            "published_at": s("integer"), "adapter_sha256": s("string"),
            "price_per_1k_input": s("number"), "price_per_1k_output": s("number") } },
        "PublishPrices": { "type": "object", "properties": { "price_per_1k_input": s("number"), "price_per_1k_output": s("number") } },
        "Balance": { "type": "object", "properties": { "account": s("string"), "balance": s("number"), "earned": s("number"),
            "spent": s("number"), "allowance": s("number"), "held": s("number"), "available": s("number"),
            "balance_micros": s("integer"), "earned_micros": s("integer"), "spent_micros": s("integer"),
            "allowance_micros": s("integer"), "held_micros": s("integer"), "available_micros": s("integer") } },
        "Token": { "type": "object", "properties": { "id": s("string"), "label": s("string"), "created_at": s("integer"),
            "expires_at": { "type": ["integer", "null"] }, "revoked_at": { "type": ["integer", "null"] }, "active": s("boolean") } },
        "TokenList": { "type": "array", "items": { "$ref": "#/components/schemas/Token" } },
        "NewToken": { "type": "object", "properties": { "label": s("string"), "expires_in_days": s("integer") } },
        "NewTokenAnswer": { "allOf": [{ "$ref": "#/components/schemas/Token" },
            { "type": "object", "properties": { "token": s("string") } }] },
        "Allowance": { "type": "object", "required": ["allowance"], "properties": { "allowance": s("number") } },
        "ModelList": { "type": "array", "items": { "type": "object", "properties": { "name": s("string"), "format": s("string"),
            "hidden_size": s("integer"), "intermediate_size": s("integer"), "layers": s("integer"), "heads": s("integer"),
            "kv_heads": s("integer"), "head_dim": s("integer"), "vocab_size": s("integer"), "params": s("integer") } } },
        "RunList": { "type": "array", "items": { "$ref": "#/components/schemas/Run" } },
        "LedgerKey": { "type": "object", "properties": { "origin": s("string"), "vkey": s("string") } },
        "LedgerEntry": { "type": "object", "properties": { "index": s("integer"), "leaf": { "type": "string", "format": "byte" },
            "leaf_hash": s("string"), "event": s("object") } },
        "LedgerEntries": { "type": "object", "properties": { "size": s("integer"),
            "entries": { "type": "array", "items": { "$ref": "#/components/schemas/LedgerEntry" } } } },
        "InclusionProof": { "type": "object", "properties": { "index": s("integer"), "size": s("integer"), "leaf_hash": s("string"),
            "hashes": { "type": "array", "items": s("string") } } },
        "ConsistencyProof": { "type": "object", "properties": { "old": s("integer"), "new": s("integer"),
            "hashes": { "type": "array", "items": s("string") } } },
    })
}

/// Builds the document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        parameters.extend(op.query.iter().map(|(name, ty, desc)| json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": { "type": ty } })));
        let ok_content = if op.ok.1.is_empty() {
            json!({ "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } })
        } else if op.ok.1 == "sse" {
            json!({ "text/event-stream": { "schema": { "type": "string" } } })
        } else {
            json!({ "application/json": { "schema": { "$ref": format!("#/components/schemas/{}", op.ok.1) } } })
        };
        let mut responses = Map::new();
        responses.insert(op.ok.0.to_string(), json!({ "description": "success", "content": ok_content }));
        let err = json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } });
        for (code, why) in [
            ("400", "bad input"),
            ("401", "missing or invalid token"),
            ("403", "not allowed"),
            ("404", "not found"),
            ("429", "rate or daily limit; see Retry-After"),
        ] {
            responses.insert(code.into(), json!({ "description": why, "content": err }));
        }
        let mut operation = json!({ "summary": op.summary, "parameters": parameters, "responses": responses });
        match op.body {
            "" => {}
            "multipart" => {
                operation["requestBody"] = json!({ "required": true, "content": { "multipart/form-data": { "schema": {
                    "type": "object", "properties": { "file": { "type": "array", "items": { "type": "string", "format": "binary" } } } } } } });
                for (code, why) in [("413", "a file is over max_file_bytes"), ("415", "not multipart/form-data")] {
                    operation["responses"][code] = json!({ "description": why, "content": err });
                }
            }
            json_ref => {
                let name = json_ref.trim_start_matches("json:");
                operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{name}") } } } });
                for (code, why) in [
                    ("409", "conflicts with what is stored"),
                    ("415", "not JSON"),
                    ("422", "invalid value; details name it"),
                ] {
                    operation["responses"][code] = json!({ "description": why, "content": err });
                }
            }
        }
        if op.auth != "none" {
            operation["security"] =
                if op.auth == "required" { json!([{ "bearer": [] }]) } else { json!([{}, { "bearer": [] }]) };
        }
        let entry = paths.entry(format!("/api/v1{}", op.path)).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "Merit API", "version": env!("CARGO_PKG_VERSION"),
                  "description": "Datanets with strict entry rules, contributions with verdicts, versions and leaderboards." },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "an API token from `merit user add`" } }
        }
    })
}

pub async fn openapi_get() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route("/path", get(..).post(..))` of routes/mod.rs, as (method, path).
    fn registered() -> Vec<(String, String)> {
        let all = include_str!("routes/mod.rs");
        // Only the `/api/v1` router; the tlog-tiles routes are specified by C2SP.
        let src = &all[all.find("pub fn api()").expect("routes/mod.rs has pub fn api()")..];
        let mut out = Vec::new();
        for chunk in src.split(".route(").skip(1) {
            let Some(path) = chunk.split('"').nth(1) else {
                continue;
            };
            let call = chunk.split("\n        .route").next().unwrap_or(chunk);
            for method in ["get", "post", "put", "patch", "delete"] {
                let first =
                    call.contains(&format!(" {method}(")) || call.contains(&format!("\n                {method}("));
                let chained = call.contains(&format!(".{method}("));
                if first || chained {
                    out.push((method.to_string(), path.to_string()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn document_matches_the_routes() {
        let mut documented: Vec<(String, String)> =
            OPERATIONS.iter().map(|o| (o.method.to_string(), o.path.to_string())).collect();
        documented.sort();
        assert_eq!(registered(), documented);
        let doc = document();
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["paths"]["/api/v1/datanets/{name}/contributions"]["post"]["requestBody"].is_object());
    }
}
