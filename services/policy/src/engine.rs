//! Rego evaluation with regorus: the [`PolicyEngine`] trait and its in-process implementation.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What went wrong loading or evaluating policies.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {path}: {reason}")]
    Directory { path: String, reason: String },
    #[error("policy {path} does not parse: {reason}")]
    Parse { path: String, reason: String },
    #[error("no .rego files in {0}")]
    Empty(String),
    #[error("evaluating {query}: {reason}")]
    Eval { query: String, reason: String },
    #[error("{query} is undefined for this input; give the rule a default")]
    Undefined { query: String },
    #[error("{query} is not a decision object: {reason}")]
    Shape { query: String, reason: String },
}

/// A policy's answer, as the Rego rule returned it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RawDecision {
    pub action: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub approval: Option<String>,
    #[serde(default)]
    pub params: RawParams,
    /// The rule that decided, when the policy names it.
    #[serde(default)]
    pub rule: Option<String>,
}

/// Decision parameters.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RawParams {
    #[serde(default)]
    pub target_tag: Option<String>,
    #[serde(default)]
    pub replicas: Option<i64>,
}

/// A loaded policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    pub path: String,
    /// `data.<package>`.
    pub package: String,
}

/// Evaluates an input document to a decision: Rego in-process ([`RegoEngine`],
/// [`ReloadingEngine`]) or an external OPA server ([`crate::opa::OpaEngine`]).
#[async_trait::async_trait]
pub trait PolicyEngine: Send + Sync + 'static {
    /// The decision for `input`, and the policy file(s) of the package that decided.
    async fn evaluate(&self, input: &serde_json::Value) -> Result<(RawDecision, String), PolicyError>;
    /// The files loaded.
    fn policies(&self) -> Vec<PolicyFile>;
    /// The query evaluated.
    fn query(&self) -> &str;
    /// Loads the policies again; engines that cannot reload report what they have.
    fn reload(&self) -> Result<Vec<PolicyFile>, PolicyError> {
        Ok(self.policies())
    }
    /// Reloads when the policy files changed since the last attempt; `None` when nothing changed.
    fn reload_if_changed(&self) -> Option<Result<Vec<PolicyFile>, PolicyError>> {
        None
    }
}

/// Rego policies from a directory, evaluated by regorus.
#[derive(Clone)]
pub struct RegoEngine {
    engine: regorus::Engine,
    /// The query compiled once, shared by every evaluation (about twice as fast as cloning the
    /// engine per call); `None` when the query does not compile, and then errors come from the
    /// ordinary path.
    compiled: Option<std::sync::Arc<regorus::CompiledPolicy>>,
    /// The query compiled once more, to a program for regorus's virtual machine: about four
    /// times as fast again (the default policy: ~25 µs against ~100). `None` when the policy
    /// uses something that compiler does not take; an evaluation the machine cannot finish is
    /// made by the interpreter, whose answer (or error) stands.
    vm: Option<std::sync::Arc<Vm>>,
    files: Vec<PolicyFile>,
    /// The files of the query's package, comma-separated: the policy named in each decision.
    deciding: String,
    /// `data.<package>.test_*` rules found in the files.
    tests: Vec<String>,
    query: String,
}

impl RegoEngine {
    /// Loads every `.rego` file in `dir`. A file is parsed as Rego v1 unless it imports
    /// `future.keywords` (OPA's v0 style) or only parses as v0.
    pub fn load_dir(dir: &Path, query: &str) -> Result<Self, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|e| PolicyError::Directory {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "rego"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::Empty(dir.display().to_string()));
        }
        let sources = paths
            .iter()
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|text| (path.display().to_string(), text))
                    .map_err(|e| PolicyError::Parse {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_sources(sources, query)
    }

    /// Loads policies given as (path, text).
    pub fn from_sources(sources: Vec<(String, String)>, query: &str) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        let mut files = Vec::new();
        let mut tests = Vec::new();
        for (path, text) in sources {
            let names = test_rule_names(&text);
            let v0_style = text.contains("import future.keywords") && !text.contains("import rego.v1");
            engine.set_rego_v0(v0_style);
            let package = match engine.add_policy(path.clone(), text.clone()) {
                Ok(package) => package,
                Err(v1_error) if !v0_style => {
                    engine.set_rego_v0(true);
                    engine.add_policy(path.clone(), text).map_err(|_| PolicyError::Parse {
                        path: path.clone(),
                        reason: v1_error.to_string(),
                    })?
                }
                Err(error) => {
                    return Err(PolicyError::Parse {
                        path,
                        reason: error.to_string(),
                    });
                }
            };
            for name in names {
                let rule = format!("{package}.{name}");
                if !tests.contains(&rule) {
                    tests.push(rule);
                }
            }
            files.push(PolicyFile { path, package });
        }
        engine.set_rego_v0(false);
        let compiled = engine.clone().compile_with_entrypoint(&query.into()).ok();
        let vm = compiled.as_ref().and_then(|compiled| Vm::compile(compiled, query));
        let package = query.rsplit_once('.').map(|(package, _)| package).unwrap_or_default();
        let deciding = files
            .iter()
            .filter(|f| f.package == package)
            .map(|f| f.path.as_str())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            engine,
            compiled: compiled.map(std::sync::Arc::new),
            vm: vm.map(std::sync::Arc::new),
            files,
            deciding,
            tests,
            query: query.to_string(),
        })
    }

    /// Runs every `test_*` rule of every package, like `opa test`: (rule, passed).
    pub fn run_tests(&self) -> Vec<(String, bool)> {
        self.tests
            .iter()
            .map(|rule| {
                let mut engine = self.engine.clone();
                let passed = matches!(engine.eval_rule(rule.clone()), Ok(regorus::Value::Bool(true)));
                (rule.clone(), passed)
            })
            .collect()
    }
}

/// The query as a program for regorus's virtual machine (RVM), and machines idle between
/// evaluations (each evaluation starts from a clean state: the machine resets itself).
pub(crate) struct Vm {
    policy: regorus::CompiledPolicy,
    program: std::sync::Arc<regorus::rvm::program::Program>,
    query: String,
    idle: std::sync::Mutex<Vec<regorus::rvm::vm::RegoVM>>,
}

/// Instructions one evaluation may run on the machine before it gives up and the interpreter
/// (which has no such limit) evaluates instead: far above what a policy over a service's history
/// needs, low enough to stop a runaway loop early.
const VM_MAX_INSTRUCTIONS: usize = 1_000_000;

/// Machines kept idle (more are made when more evaluations run at once).
const VM_IDLE: usize = 16;

impl Vm {
    fn compile(policy: &regorus::CompiledPolicy, query: &str) -> Option<Self> {
        match regorus::languages::rego::compiler::Compiler::compile_from_policy(policy, &[query]) {
            Ok(program) => Some(Self {
                policy: policy.clone(),
                program,
                query: query.to_string(),
                idle: Default::default(),
            }),
            Err(error) => {
                tracing::debug!(%error, query, "the policy does not compile for regorus's virtual machine");
                None
            }
        }
    }

    /// The query's value for `input`; `None` when the machine cannot say (an error, or undefined:
    /// the interpreter then answers, with its own words for what went wrong).
    fn eval(&self, input: regorus::Value) -> Option<regorus::Value> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut vm = idle.unwrap_or_else(|| {
            let mut vm = regorus::rvm::vm::RegoVM::new_with_policy(self.policy.clone());
            vm.load_program(self.program.clone());
            vm.set_max_instructions(VM_MAX_INSTRUCTIONS);
            vm
        });
        vm.set_input(input);
        let value = vm.execute_entry_point_by_name(&self.query);
        vm.set_input(regorus::Value::Null);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < VM_IDLE
        {
            idle.push(vm);
        }
        match value {
            Ok(regorus::Value::Undefined) => None,
            Ok(value) => Some(value),
            Err(error) => {
                tracing::debug!(%error, "regorus's virtual machine did not finish: the interpreter evaluates");
                None
            }
        }
    }
}

fn test_rule_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let name: String = line
                .strip_prefix("test_")?
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            Some(format!("test_{name}"))
        })
        .collect()
}

#[async_trait::async_trait]
impl PolicyEngine for RegoEngine {
    async fn evaluate(&self, input: &serde_json::Value) -> Result<(RawDecision, String), PolicyError> {
        self.eval(input)
    }

    fn policies(&self) -> Vec<PolicyFile> {
        self.files.clone()
    }

    fn query(&self) -> &str {
        &self.query
    }
}

impl RegoEngine {
    /// Whether evaluations run on regorus's virtual machine (else its interpreter).
    pub fn compiled_to_vm(&self) -> bool {
        self.vm.is_some()
    }

    /// On regorus's virtual machine where the policy compiled for it (`true`), or on its
    /// interpreter only (`false`: the reference, for a policy the two would decide differently).
    pub fn on_vm(mut self, vm: bool) -> Self {
        if !vm {
            self.vm = None;
        }
        self
    }

    /// What regorus's interpreter makes of the query for `input`.
    fn interpret(&self, input: regorus::Value) -> Result<regorus::Value, String> {
        match &self.compiled {
            Some(compiled) => compiled.eval_with_input(input),
            None => {
                let mut engine = self.engine.clone();
                engine.set_input(input);
                engine.eval_rule(self.query.clone())
            }
        }
        .map_err(|e| e.to_string())
    }

    /// The decision for `input` (synchronous; about 25 µs for the default policy).
    pub fn eval(&self, input: &serde_json::Value) -> Result<(RawDecision, String), PolicyError> {
        let eval_error = |reason: String| PolicyError::Eval {
            query: self.query.clone(),
            reason,
        };
        // Read straight from the JSON (no copy of it first).
        let input = regorus::Value::deserialize(input).map_err(|e| eval_error(e.to_string()))?;
        let value = match self.vm.as_ref().and_then(|vm| vm.eval(input.clone())) {
            Some(value) => value,
            None => self.interpret(input).map_err(eval_error)?,
        };
        if value == regorus::Value::Undefined {
            return Err(PolicyError::Undefined {
                query: self.query.clone(),
            });
        }
        // Through a JSON value, not its text.
        let json = serde_json::to_value(&value).map_err(|e| eval_error(e.to_string()))?;
        let raw = RawDecision::deserialize(&json).map_err(|e| PolicyError::Shape {
            query: self.query.clone(),
            reason: e.to_string(),
        })?;
        Ok((raw, self.deciding.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn default_policy() -> RegoEngine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policies");
        RegoEngine::load_dir(&dir, "data.selfheal.decision").expect("default policy loads")
    }

    fn alert(labels: serde_json::Value) -> serde_json::Value {
        json!({"alert": {"labels": labels, "status": "firing"}})
    }

    #[test]
    fn default_policy_decides_each_case_with_a_reason() {
        let engine = default_policy();
        let (rollback, policy) = engine
            .eval(&alert(json!({"alertname": "HighErrorRate", "severity": "critical", "auto_heal": "true", "service": "checkout"})))
            .expect("eval");
        assert_eq!(rollback.action, "rollback");
        assert_eq!(rollback.approval.as_deref(), Some("auto"));
        assert!(rollback.reason.contains("checkout"), "{}", rollback.reason);
        assert!(policy.ends_with("selfheal.rego"));

        let mut scale_input = alert(json!({"alertname": "HighCPU", "auto_heal": "true", "service": "cart"}));
        scale_input["target"] = json!({"replicas": 2});
        let (scale, _) = engine.eval(&scale_input).expect("eval");
        assert_eq!((scale.action.as_str(), scale.params.replicas), ("scale", Some(3)));

        let (unknown_target, _) = engine
            .eval(&alert(
                json!({"alertname": "HighCPU", "auto_heal": "true", "service": "cart"}),
            ))
            .expect("eval");
        assert_eq!(unknown_target.action, "escalate");

        let (none, _) = engine
            .eval(&alert(json!({"alertname": "HighRestartCount", "service": "checkout"})))
            .expect("eval");
        assert_eq!(none.action, "none");
        assert!(!none.reason.is_empty());
    }

    /// regorus's virtual machine decides as its interpreter does on every branch of the default
    /// policy: each combination of alert, metrics, target, history, windows and callers.
    #[test]
    fn the_virtual_machine_decides_as_the_interpreter_does() {
        let engine = default_policy();
        let vm = engine
            .vm
            .as_ref()
            .expect("the default policy compiles for the virtual machine");
        let now = "2026-12-01T12:00:00Z";
        let metrics = [
            json!({}),
            json!({"metrics": {"error_rate": 0.12, "restarts": 5}}),
            json!({"metrics": {"error_rate": 0.01, "restarts": 1}}),
            json!({"metrics": {"error_rate": 0.2}}),
            json!({"metrics": {"cpu": 0.93}}),
            json!({"metrics": {"cpu": 0.42}}),
            json!({"metrics": {}, "metrics_errors": {"error_rate": "prometheus: timeout"}}),
        ];
        let targets = [
            json!(null),
            json!({"replicas": 2}),
            json!({"replicas": 10, "max_replicas": 10}),
        ];
        let rollback =
            |at: &str| json!({"incident": "i", "action": "rollback", "at": at, "alertname": "HighErrorRate"});
        let histories = [
            json!([]),
            json!([rollback("2026-12-01T11:50:00Z"), rollback("2026-12-01T11:55:00Z")]),
            json!([rollback("2026-12-01T10:00:00Z")]),
            json!([{"incident": "v", "action": "rollback", "at": "2026-12-01T11:40:00Z", "alertname": "HighErrorRate",
                    "outcome": "verified", "outcome_at": "2026-12-01T11:45:00Z"},
                   {"incident": "w", "action": "scale", "at": "2026-12-01T11:40:00Z", "alertname": "HighCPU",
                    "outcome": "verified", "outcome_at": "2026-12-01T11:41:00Z"}]),
        ];
        let windows = [
            json!([]),
            json!([{"name": "freeze", "kind": "freeze", "until": "2026-12-01T13:00:00Z", "reason": "failover"}]),
            json!([{"name": "release", "kind": "window", "until": "2026-12-01T12:30:00Z", "reason": ""}]),
        ];
        let callers = [
            json!({}),
            json!({"max_firing_dependents": 2, "dependents": [
                {"service": "web", "rate": 3.5, "firing": true},
                {"service": "api", "rate": 1.0, "firing": true},
                {"service": "batch", "rate": 0.1, "firing": true},
                {"service": "cron", "rate": 0.0, "firing": false}]}),
        ];
        let mut cases = 0;
        for alertname in ["HighErrorRate", "HighCPU", "HighRestartCount"] {
            for severity in ["critical", "warning"] {
                for auto_heal in ["true", "false"] {
                    for metrics in &metrics {
                        for target in &targets {
                            for history in &histories {
                                for windows in &windows {
                                    for callers in &callers {
                                        let mut input = json!({
                                            "alert": {"labels": {"alertname": alertname, "severity": severity,
                                                                 "auto_heal": auto_heal, "service": "checkout"},
                                                      "status": "firing"},
                                            "incident": "k", "history": history, "windows": windows,
                                            "recently_fixed_seconds": 3600, "now": now,
                                        });
                                        for extra in [metrics, callers] {
                                            for (key, value) in extra.as_object().into_iter().flatten() {
                                                input[key] = value.clone();
                                            }
                                        }
                                        if !target.is_null() {
                                            input["target"] = target.clone();
                                        }
                                        let value = regorus::Value::from(input.clone());
                                        let interpreted =
                                            engine.interpret(value.clone()).expect("the interpreter decides");
                                        let run = vm.eval(value);
                                        assert_eq!(run.as_ref(), Some(&interpreted), "{input}");
                                        cases += 1;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 3 * 2 * 2 * 7 * 3 * 4 * 3 * 2);
        assert!(engine.compiled_to_vm());
        // `rego_vm = false`: the interpreter only, deciding alike.
        let interpreted = default_policy().on_vm(false);
        assert!(!interpreted.compiled_to_vm());
        let input = alert(
            json!({"alertname": "HighErrorRate", "severity": "critical", "auto_heal": "true", "service": "checkout"}),
        );
        assert_eq!(
            interpreted.eval(&input).expect("eval"),
            engine.eval(&input).expect("eval")
        );
    }

    #[test]
    fn default_policy_tests_pass() {
        let results = default_policy().run_tests();
        assert!(results.len() >= 3, "{results:?}");
        assert!(results.iter().all(|(_, passed)| *passed), "{results:?}");
    }

    #[test]
    fn v0_policies_load_and_bad_ones_name_the_file() {
        let v0 = "package legacy\nimport future.keywords.if\ndecision := {\"action\": \"none\", \"reason\": \"v0\"} if { true }\n";
        let engine = RegoEngine::from_sources(vec![("legacy.rego".into(), v0.into())], "data.legacy.decision")
            .expect("v0 loads");
        assert_eq!(engine.eval(&json!({})).expect("eval").0.reason, "v0");
        let broken = RegoEngine::from_sources(
            vec![("broken.rego".into(), "package x\nallow if {".into())],
            "data.x.allow",
        );
        assert!(matches!(broken, Err(PolicyError::Parse { ref path, .. }) if path == "broken.rego"));
        let undefined = RegoEngine::from_sources(
            vec![("u.rego".into(), "package u\nimport rego.v1\nd := 1 if false\n".into())],
            "data.u.d",
        )
        .expect("loads")
        .eval(&json!({}));
        assert!(matches!(undefined, Err(PolicyError::Undefined { .. })));
    }
}

/// Policies from a directory that reload when the files change. A reload that fails (a file that
/// does not parse) keeps the last good policies in force and reports the error.
pub struct ReloadingEngine {
    dir: PathBuf,
    query: String,
    /// Evaluate on regorus's virtual machine where the policy compiles for it (`rego_vm`).
    vm: bool,
    current: std::sync::RwLock<Arc<RegoEngine>>,
    /// The error of the last failed reload, cleared by a good one.
    last_error: std::sync::RwLock<Option<String>>,
    /// What the directory looked like at the last reload attempt.
    fingerprint: std::sync::Mutex<Vec<Fingerprint>>,
}

/// One policy file as last seen: its path, the file it resolves to, its time and size.
type Fingerprint = (PathBuf, Option<PathBuf>, std::time::SystemTime, u64);

use std::sync::Arc;

/// The directory's policy files, through symbolic links: a Kubernetes ConfigMap volume keeps
/// each file as a link into a directory that it swaps whole on an update, so the links
/// themselves never change.
fn fingerprint(dir: &Path) -> Vec<Fingerprint> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|path| path.extension().is_some_and(|x| x == "rego"))
                .filter_map(|path| {
                    let meta = std::fs::metadata(&path).ok()?;
                    let target = std::fs::canonicalize(&path).ok();
                    Some((path, target, meta.modified().ok()?, meta.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

impl ReloadingEngine {
    /// Loads `dir`; fails if the first load fails (a service must not start without policies).
    /// `vm`: evaluate on regorus's virtual machine where the policy compiles for it (false: on
    /// its interpreter only).
    pub fn load(dir: &Path, query: &str, vm: bool) -> Result<Self, PolicyError> {
        let print = fingerprint(dir);
        let engine = RegoEngine::load_dir(dir, query)?.on_vm(vm);
        if vm && !engine.compiled_to_vm() {
            tracing::info!(
                query,
                "evaluating on regorus's interpreter: the policy does not compile for its virtual machine"
            );
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            query: query.to_string(),
            vm,
            current: std::sync::RwLock::new(Arc::new(engine)),
            last_error: std::sync::RwLock::new(None),
            fingerprint: std::sync::Mutex::new(print),
        })
    }

    fn engine(&self) -> Arc<RegoEngine> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Loads the directory again. On failure the previous policies stay in force.
    pub fn reload(&self) -> Result<Vec<PolicyFile>, PolicyError> {
        *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) = fingerprint(&self.dir);
        match RegoEngine::load_dir(&self.dir, &self.query).map(|engine| engine.on_vm(self.vm)) {
            Ok(engine) => {
                let files = engine.policies();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(engine);
                *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(policies = files.len(), "policies reloaded");
                Ok(files)
            }
            Err(error) => {
                tracing::error!(error = %error, "policy reload failed; the last good policies stay in force");
                *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Reloads if a `.rego` file was added, removed or changed since the last attempt.
    pub fn reload_if_changed(&self) -> Option<Result<Vec<PolicyFile>, PolicyError>> {
        let now = fingerprint(&self.dir);
        let changed = *self.fingerprint.lock().unwrap_or_else(|p| p.into_inner()) != now;
        changed.then(|| self.reload())
    }

    /// The error of the last failed reload, if the last reload failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The decision for `input` from the policies in force (synchronous).
    pub fn eval(&self, input: &serde_json::Value) -> Result<(RawDecision, String), PolicyError> {
        self.engine().eval(input)
    }

    /// Runs `test_` rules of the policies in force.
    pub fn run_tests(&self) -> Vec<(String, bool)> {
        self.engine().run_tests()
    }
}

#[async_trait::async_trait]
impl PolicyEngine for ReloadingEngine {
    async fn evaluate(&self, input: &serde_json::Value) -> Result<(RawDecision, String), PolicyError> {
        self.engine().eval(input)
    }

    fn reload(&self) -> Result<Vec<PolicyFile>, PolicyError> {
        ReloadingEngine::reload(self)
    }

    fn reload_if_changed(&self) -> Option<Result<Vec<PolicyFile>, PolicyError>> {
        ReloadingEngine::reload_if_changed(self)
    }

    fn policies(&self) -> Vec<PolicyFile> {
        self.engine().policies()
    }

    fn query(&self) -> &str {
        &self.query
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;

    const GOOD: &str = "package selfheal\nimport rego.v1\ndecision := {\"action\": \"none\", \"reason\": \"v1\"}\n";

    #[test]
    fn a_broken_file_keeps_the_last_good_policy() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("p.rego");
        std::fs::write(&file, GOOD)?;
        let engine = ReloadingEngine::load(dir.path(), "data.selfheal.decision", true)?;
        assert_eq!(engine.eval(&serde_json::json!({}))?.0.reason, "v1");

        std::fs::write(&file, "package selfheal\ndecision := {\n")?;
        assert!(matches!(engine.reload(), Err(PolicyError::Parse { .. })));
        assert_eq!(
            engine.eval(&serde_json::json!({}))?.0.reason,
            "v1",
            "the last good policy stays"
        );
        assert!(engine.last_error().is_some_and(|e| e.contains("p.rego")));

        std::fs::write(&file, GOOD.replace("\"v1\"", "\"v2-longer\""))?;
        let reloaded = engine.reload_if_changed();
        assert!(matches!(reloaded, Some(Ok(_))), "{reloaded:?}");
        assert_eq!(engine.eval(&serde_json::json!({}))?.0.reason, "v2-longer");
        assert!(engine.last_error().is_none());
        assert!(engine.reload_if_changed().is_none(), "nothing changed since");
        Ok(())
    }

    /// As the kubelet updates a ConfigMap volume: each file is a link through `..data`, which is
    /// swapped to a new directory in one rename.
    #[cfg(unix)]
    #[test]
    fn a_configmap_update_reloads() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir()?;
        let version = |name: &str, reason: &str| -> std::io::Result<()> {
            std::fs::create_dir(dir.path().join(name))?;
            std::fs::write(
                dir.path().join(name).join("p.rego"),
                GOOD.replace("\"v1\"", &format!("{reason:?}")),
            )
        };
        version("..2026_11_28_01", "v1")?;
        symlink("..2026_11_28_01", dir.path().join("..data"))?;
        symlink("..data/p.rego", dir.path().join("p.rego"))?;
        let engine = ReloadingEngine::load(dir.path(), "data.selfheal.decision", true)?;
        assert_eq!(engine.eval(&serde_json::json!({}))?.0.reason, "v1");
        assert!(engine.reload_if_changed().is_none(), "nothing changed yet");

        // Same size, new text, in a new directory; the link to it replaces `..data` atomically.
        version("..2026_11_28_02", "v2")?;
        symlink("..2026_11_28_02", dir.path().join("..data_tmp"))?;
        std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data"))?;
        let reloaded = engine.reload_if_changed();
        assert!(matches!(reloaded, Some(Ok(_))), "{reloaded:?}");
        assert_eq!(engine.eval(&serde_json::json!({}))?.0.reason, "v2");
        Ok(())
    }

    #[tokio::test]
    async fn conflicting_rules_are_an_error_not_a_crash() -> Result<(), Box<dyn std::error::Error>> {
        let conflicting = "package selfheal\nimport rego.v1\ndecision := {\"action\": \"none\", \"reason\": \"a\"} if true\ndecision := {\"action\": \"rollback\", \"reason\": \"b\"} if true\n";
        let engine = RegoEngine::from_sources(vec![("c.rego".into(), conflicting.into())], "data.selfheal.decision")?;
        let result = engine.eval(&serde_json::json!({}));
        assert!(matches!(result, Err(PolicyError::Eval { .. })), "{result:?}");
        // Through the service's decision path: an escalation that carries the error.
        let event = selfheal_proto::v1::AlertEvent {
            incident_key: "k".into(),
            ..Default::default()
        };
        let (decision, _) = crate::decide::decide(
            &engine,
            &event,
            &crate::decide::Extra::default(),
            false,
            chrono::Utc::now(),
        )
        .await;
        assert_eq!(decision.action(), selfheal_proto::v1::Action::Escalate);
        assert!(
            decision
                .reason
                .starts_with("policy failed, so nothing was changed: evaluating"),
            "{}",
            decision.reason
        );
        Ok(())
    }
}
