//! The OpenAPI description served at `/api/v1/openapi.json`.

use serde_json::{json, Value};

fn op(summary: &str, scope: &str, ok: &str, extra: &[(&str, &str)]) -> Value {
    let mut responses = json!({
        ok: {"description": "success"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
        "503": {"$ref": "#/components/responses/Error"},
        "507": {"$ref": "#/components/responses/Error"},
    });
    for (code, why) in extra {
        responses[*code] = json!({"description": why, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    }
    json!({"summary": summary, "description": format!("Scopes: admin or {scope}."), "security": [{"bearer": []}], "responses": responses})
}

const BODY_413: &str = "the body is larger than the route takes (10 MiB for a job, 256 KiB otherwise)";

/// `op` with a JSON request body of schema `schema` (a component name).
pub(super) fn with_body(mut op: Value, schema: &str, required: bool) -> Value {
    op["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    op
}

const PROJECT: &str = r"^[A-Za-z0-9_./@:-]{1,200}$";
const NAME_PART: &str = r"^[A-Za-z0-9_.-]{1,100}$";

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
}

/// The specification.
pub fn spec() -> Value {
    let mut request = op(
        "Request a VM for a task",
        "operator, agent",
        "201",
        &[("400", "malformed body or unknown executor, image, resource class or project"), ("413", BODY_413)],
    );
    request = with_body(request, "TaskRequest", true);
    let with_id = |mut v: Value| {
        v["parameters"] = id_param();
        v
    };
    let with_id_name = |mut v: Value| {
        v["parameters"] = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
        v
    };
    let mut spec = json!({
        "openapi": "3.0.3",
        "info": {"title": "vmfleet", "version": env!("CARGO_PKG_VERSION"), "description": "VM fleet and autoscaling controller for CI executors."},
        "paths": {
            "/status": {"get": {"summary": "Health: 200 when healthy; 500 with a reason when the configuration or the policies are bad; 503 with a reason while the database is unreachable, its disk full, or reconcile passes fail on it", "security": [], "responses": {"200": {"description": "healthy"}, "500": {"description": "misconfigured, with a JSON reason"}, "503": {"description": "unavailable, with a JSON reason"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text format 0.0.4"}}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3"}}}},
            "/api/v1/summary": {"get": op("Installation id, VMs by state per pool, tasks waiting and running, volumes", "operator", "200", &[])},
            "/api/v1/tasks": {
                "post": request,
                "get": op("List tasks (query: state, limit)", "operator", "200", &[("400", "bad query")]),
            },
            "/api/v1/tasks/{id}": {
                "get": with_id(op("Show a task; an assigned task carries its VM's SSH host, port, user and private key", "operator, agent", "200", &[("404", "no such task")])),
                "delete": with_id(op("Release a task: its VM is destroyed, its volume detached", "operator, agent", "200", &[("404", "no such task")])),
            },
            "/api/v1/vms": {"get": op("List live VMs", "operator", "200", &[])},
            "/api/v1/vms/{id}": {
                "get": with_id(op("Show a VM", "operator", "200", &[("404", "no such VM")])),
                "delete": with_id(op("Destroy a VM; a task on it fails", "operator", "200", &[("404", "no such VM")])),
            },
            "/api/v1/vms/{id}/drain": {"post": with_id(op("Give a VM no new work", "operator", "200", &[("404", "no such VM")]))},
            "/api/v1/images": {
                "get": op("The image catalog: versions and aliases", "operator", "200", &[]),
                "post": with_body(op("Register an image version {name, version, kind, arch, amis}", "operator, image-publisher", "201", &[("400", "a bad field, named"), ("409", "that version is registered already"), ("413", BODY_413)]), "RegisterImage", true),
            },
            "/api/v1/images/{name}": {"get": with_id_name(op("An image's versions, aliases and alias history", "operator", "200", &[("404", "no such image")]))},
            "/api/v1/images/{name}/promote": {"post": with_id_name(with_body(op("Point an alias (default: the name) at a version {version, alias}", "operator", "200", &[("400", "a bad field, named"), ("404", "no such version"), ("413", BODY_413)]), "Promote", true))},
            "/api/v1/images/{name}/rollback": {"post": with_id_name(with_body(op("Point an alias (default: the name) back at its previous version {alias}", "operator", "200", &[("400", "a bad field, named"), ("404", "no such alias"), ("409", "nothing to roll back to"), ("413", BODY_413)]), "Rollback", false))},
            "/api/v1/jobs": {
                "post": with_body(op("Submit a CircleCI job {config, config_file, job, project, repo, revision, branch, deploy_key, parameters, pipeline_parameters, workflow}; it is checked whole and queued with one task per parallel node", "operator, agent", "201", &[("400", "a bad config, named with its file and line (a config past its limits included), a job this installation cannot run, or a context the project may not use"), ("413", BODY_413)]), "JobSubmission", true),
                "get": op("List jobs, newest first (query: state, limit)", "operator", "200", &[("400", "bad query")]),
            },
            "/api/v1/jobs/{id}": {"get": with_id(op("Show a job (id or number) with its tasks and their steps", "operator, agent", "200", &[("404", "no such job")]))},
            "/api/v1/jobs/{id}/output": {"get": with_id(op("The job's output as server-sent events: `output` events {node, attempt, step, stream, data}, then `end` {state, exit_code, failure_reason}; query follow=false for what there is now", "operator, agent", "200", &[("404", "no such job")]))},
            "/api/v1/jobs/{id}/cancel": {"post": with_id(op("Cancel a job: queued tasks end, running ones stop and their VMs are destroyed", "operator, agent", "200", &[("404", "no such job"), ("409", "the job has ended")]))},
            "/api/v1/volumes": {"get": op("List DLC volumes", "operator", "200", &[])},
            "/api/v1/volumes/{id}": {
                "get": with_id(op("Show a volume", "operator", "200", &[("404", "no such volume")])),
                "delete": with_id(op("Delete a volume", "operator", "200", &[("404", "no such volume"), ("409", "the volume is attached")])),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "TaskRequest": {"type": "object", "required": ["executor", "project"], "additionalProperties": false, "properties": {
                    "executor": {"type": "string", "enum": ["machine", "remote-docker"]},
                    "image": {"type": "string", "default": "default"},
                    "resource_class": {"type": "string", "default": "medium"},
                    "project": {"type": "string", "pattern": PROJECT},
                    "docker_layer_caching": {"type": "boolean", "default": false},
                }},
                "RegisterImage": {"type": "object", "required": ["name", "version", "kind", "amis"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "pattern": NAME_PART},
                    "version": {"type": "string", "pattern": NAME_PART},
                    "kind": {"type": "string", "enum": ["linux", "windows", "gpu", "remote-docker"]},
                    "arch": {"type": "string", "enum": ["x86_64", "arm64"], "default": "x86_64"},
                    "amis": {"type": "object", "minProperties": 1, "description": "AMI per region, such as {\"us-east-1\": \"ami-0a1b2c3d\"}", "additionalProperties": {"type": "string", "pattern": r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$"}},
                }},
                "Promote": {"type": "object", "required": ["version"], "additionalProperties": false, "properties": {
                    "version": {"type": "string"},
                    "alias": {"type": "string"},
                }},
                "Rollback": {"type": "object", "additionalProperties": false, "properties": {"alias": {"type": "string"}}},
                "JobSubmission": {"type": "object", "required": ["config", "job", "project"], "additionalProperties": false, "properties": {
                    "config": {"type": "string", "description": "the CircleCI config's text (at most 4 MiB)"},
                    "config_file": {"type": "string"},
                    "job": {"type": "string"},
                    "project": {"type": "string", "pattern": PROJECT},
                    "repo": {"type": "string"},
                    "revision": {"type": "string"},
                    "branch": {"type": "string"},
                    "deploy_key": {"type": "string", "description": "an SSH private key `checkout` clones with"},
                    "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                    "pipeline_parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                    "workflow": {"type": "string", "description": "the workflow the job runs in: its entry's contexts and instance parameters apply"},
                }},
            },
        },
    });
    secrets_paths(&mut spec);
    super::workflows::openapi(&mut spec, op, BODY_413);
    super::storage::openapi(&mut spec, op);
    spec
}

/// The secrets routes: values go in, names and hints come out.
fn secrets_paths(spec: &mut Value) {
    let params = |names: &[&str]| -> Value {
        names.iter().map(|n| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}})).collect()
    };
    let with = |mut v: Value, names: &[&str]| {
        v["parameters"] = params(names);
        v
    };
    let s = "secrets";
    let bad = ("400", "a bad project, name or value, named");
    let paths = [
        (
            "/api/v1/projects/{project}/env",
            json!({
                "get": with(op("A project's environment variables: names and hints (xxxx and the last 4 characters of values of 8 or more), never values", s, "200", &[bad]), &["project"]),
            }),
        ),
        (
            "/api/v1/projects/{project}/env/{name}",
            json!({
                "put": with(with_body(op("Set a project's variable {value}; sealed at rest", s, "200", &[bad, ("409", "the project holds 1,000 variables"), ("413", BODY_413)]), "SetValue", true), &["project", "name"]),
                "delete": with(op("Remove a project's variable", s, "200", &[bad, ("404", "no such variable")]), &["project", "name"]),
            }),
        ),
        (
            "/api/v1/projects/{project}/ssh-keys",
            json!({
                "get": with(op("A project's SSH keys: fingerprints and hosts", s, "200", &[bad]), &["project"]),
                "post": with(with_body(op("Add an SSH private key {private_key, host} for add_ssh_keys", s, "201", &[("400", "not an unencrypted private key, or a bad host"), ("413", BODY_413)]), "AddSshKey", true), &["project"]),
            }),
        ),
        (
            "/api/v1/projects/{project}/ssh-keys/{fingerprint}",
            json!({
                "delete": with(op("Remove an SSH key (SHA256 or MD5 fingerprint)", s, "200", &[bad, ("404", "no such key")]), &["project", "fingerprint"]),
            }),
        ),
        (
            "/api/v1/contexts",
            json!({
                "get": op("Contexts", s, "200", &[]),
                "post": with_body(op("Create a context {name, projects}; usable by the projects listed, or every project", s, "201", &[bad, ("409", "a context of that name exists"), ("413", BODY_413)]), "NewContext", true),
            }),
        ),
        (
            "/api/v1/contexts/{name}",
            json!({
                "get": with(op("A context and its variables (names and hints)", s, "200", &[("404", "no such context")]), &["name"]),
                "delete": with(op("Delete a context and its variables", s, "204", &[("404", "no such context")]), &["name"]),
            }),
        ),
        (
            "/api/v1/contexts/{name}/env/{var}",
            json!({
                "put": with(with_body(op("Set a context's variable {value}; sealed at rest", s, "200", &[bad, ("404", "no such context"), ("409", "the context holds 1,000 variables"), ("413", BODY_413)]), "SetValue", true), &["name", "var"]),
                "delete": with(op("Remove a context's variable", s, "200", &[bad, ("404", "no such context or variable")]), &["name", "var"]),
            }),
        ),
        (
            "/api/v1/secrets/rotate-key",
            json!({
                "post": with_body(op("Re-seal every value under a new key in one transaction {new_key}; without new_key the server generates one into its key file", s, "200", &[("400", "a bad new key, or none for a key from the environment"), ("409", "a value changed during the rotation; nothing was changed"), ("413", BODY_413)]), "RotateKey", false),
            }),
        ),
    ];
    for (path, item) in paths {
        spec["paths"][path] = item;
    }
    let schemas = &mut spec["components"]["schemas"];
    schemas["SetValue"] = json!({"type": "object", "required": ["value"], "additionalProperties": false, "properties": {"value": {"type": "string", "minLength": 1, "description": "at most 64 KiB (400 past it; 413 for a body past 256 KiB)"}}});
    schemas["AddSshKey"] = json!({"type": "object", "required": ["private_key"], "additionalProperties": false, "properties": {"private_key": {"type": "string"}, "host": {"type": "string"}}});
    schemas["NewContext"] = json!({"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,100}$"}, "projects": {"type": "array", "items": {"type": "string", "pattern": PROJECT}}}});
    schemas["RotateKey"] = json!({"type": "object", "additionalProperties": false, "properties": {"new_key": {"type": "string", "nullable": true, "description": "base64 of 32 bytes; null or absent: the server generates one"}}});
}
