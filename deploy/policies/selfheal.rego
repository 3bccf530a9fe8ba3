# selfheal's default remediation policy.
#
# Input (README, "The policy input"):
#   input.alert           labels, annotations, status, startsAt, endsAt, fingerprint
#   input.incident        the incident key
#   input.metrics         metric name -> number, for the configured PromQL queries that could be read
#   input.metrics_errors  metric name -> why it could not be read (absent is never zero)
#   input.history         this service's automatic actions in the limit window:
#                         [{incident, action, at, alertname, outcome, outcome_at}]
#   input.target          what the GitOps repository says about the service, when known
#   input.windows         the critical windows in force for this alert (and the freeze):
#                         [{name, kind, until, description, reason}]
#   input.recently_fixed_seconds  how soon after a verified fix a repeat is not fixed again
#   input.dependents      the service's callers: [{service, rate, firing}] (rate: requests/s)
#   input.max_firing_dependents   more callers firing than this: a wider incident (0: off)
#   input.now             RFC 3339 time of evaluation
#
# Output: data.selfheal.decision, an object with
#   action    "rollback" | "scale" | "restart" | "none" | "escalate"
#   reason    why, for the person on call
#   approval  "auto" (merged at once) | "required" (waits for a person)
#   params    {"target_tag": "..."} for rollback (empty: the previous tag in git history),
#             {"replicas": n} for scale
#
# Approval by severity: "critical" is auto (the page is already burning and a rollback to a tag
# that ran before is the safest change there is); every other severity is "required".
package selfheal

import rego.v1

labels := input.alert.labels

default approval := "required"

approval := "auto" if labels.severity == "critical"

max_rollbacks := 2

# The repository's limit when the pr-controller reports one, else 10.
max_replicas := object.get(object.get(input, "target", {}), "max_replicas", 10)

# --- rollback: a critical error-rate alert on a service that opted in -------------------------

default allow_rollback := false

allow_rollback if {
	labels.alertname == "HighErrorRate"
	labels.severity == "critical"
	labels.auto_heal == "true"
}

# Metrics that were configured but could not be read: never act blind.
unreadable contains sprintf("%s could not be read (%s)", [name, problem]) if {
	some name, problem in input.metrics_errors
}

# Metrics that were read but do not confirm the alert. A metric that is not configured confirms
# nothing and blocks nothing: the alert's own threshold is then the evidence.
unconfirmed contains sprintf("the error rate is %v%%, not over 5%%", [round(input.metrics.error_rate * 1000) / 10]) if {
	input.metrics.error_rate <= 0.05
}

unconfirmed contains sprintf("%v restarts, not over 3", [input.metrics.restarts]) if {
	input.metrics.restarts <= 3
}

# Rollbacks in the last 30 minutes (the history may reach further back, for recently_fixed).
rollback_window_ns := (30 * 60) * 1000000000

older(h) if time.parse_rfc3339_ns(input.now) - time.parse_rfc3339_ns(h.at) >= rollback_window_ns

recent_rollbacks := count([h | some h in input.history; h.action == "rollback"; not older(h)])

rollback_decision := {
	"action": "escalate",
	"approval": "required",
	"reason": sprintf("%s for %s, but a metric the policy needs is missing: %s", [labels.alertname, labels.service, concat("; ", unreadable)]),
} if {
	count(unreadable) > 0
} else := {
	"action": "none",
	"approval": "required",
	"reason": sprintf("%s for %s, but the metrics do not confirm it: %s", [labels.alertname, labels.service, concat("; ", unconfirmed)]),
} if {
	count(unconfirmed) > 0
} else := {
	"action": "escalate",
	"approval": "required",
	"reason": sprintf("%s for %s, but it was rolled back %d times in the last 30 minutes: a person must look", [labels.alertname, labels.service, recent_rollbacks]),
} if {
	recent_rollbacks >= max_rollbacks
} else := {
	"action": "rollback",
	"approval": approval,
	"reason": sprintf("%s is critical for %s%s: roll back to the previous image", [labels.alertname, labels.service, evidence]),
}

evidence := sprintf(" (error rate %v%%, %v restarts)", [round(input.metrics.error_rate * 1000) / 10, input.metrics.restarts]) if {
	is_number(input.metrics.error_rate)
	is_number(input.metrics.restarts)
} else := sprintf(" (error rate %v%%)", [round(input.metrics.error_rate * 1000) / 10]) if {
	is_number(input.metrics.error_rate)
} else := ""

# --- scale: CPU over 80 % while below the maximum --------------------------------------------

default allow_scale := false

allow_scale if {
	labels.alertname == "HighCPU"
	labels.auto_heal == "true"
}

cpu_ok if not is_number(input.metrics.cpu)

cpu_ok if input.metrics.cpu > 0.8

scale_decision := {
	"action": "escalate",
	"approval": "required",
	"reason": sprintf("%s for %s, but a metric the policy needs is missing: %s", [labels.alertname, labels.service, concat("; ", unreadable)]),
} if {
	count(unreadable) > 0
} else := {
	"action": "none",
	"approval": "required",
	"reason": sprintf("%s for %s, but CPU is %v%%, not over 80%%", [labels.alertname, labels.service, round(input.metrics.cpu * 100)]),
} if {
	not cpu_ok
} else := {
	"action": "scale",
	"approval": approval,
	"params": {"replicas": input.target.replicas + 1},
	"reason": sprintf("%s for %s: scale from %d to %d replicas", [labels.alertname, labels.service, input.target.replicas, input.target.replicas + 1]),
} if {
	is_number(input.target.replicas)
	input.target.replicas < max_replicas
} else := {
	"action": "escalate",
	"approval": "required",
	"reason": sprintf("%s for %s, but its replica count is unknown or already at %d: a person must look", [labels.alertname, labels.service, max_replicas]),
}

# --- the decision -----------------------------------------------------------------------------

# What the rules above would do.
default wanted := {
	"action": "none",
	"approval": "required",
	"reason": "no remediation rule matches this alert",
}

wanted := rollback_decision if allow_rollback

wanted := scale_decision if {
	allow_scale
	not allow_rollback
}

changes if wanted.action in {"rollback", "scale", "restart"}

# A person decides, not selfheal, inside a critical window, and when the same alert comes back
# soon after a verified fix (`recently_fixed_seconds`): a fix that must be repeated hides a cause. (The service
# enforces both too, whatever a policy says: `[[windows]]`, the freeze, `limits.recently_fixed`.)
windows := object.get(input, "windows", [])

# The service's `limits.recently_fixed` (an hour when the input does not say).
recently_fixed_ns := object.get(input, "recently_fixed_seconds", 3600) * 1000000000

recent_fixes := [r |
	some r in object.get(input, "history", [])
	r.alertname == labels.alertname
	r.outcome == "verified"
	time.parse_rfc3339_ns(input.now) - time.parse_rfc3339_ns(r.outcome_at) < recently_fixed_ns
]

window_why := sprintf(" (%s)", [windows[0].reason]) if {
	is_string(windows[0].reason)
	windows[0].reason != ""
}

default window_why := ""

held := sprintf("critical window %q%s is in force until %s", [windows[0].name, window_why, windows[0].until]) if count(windows) > 0

held := sprintf("%s was fixed by a %s verified at %s and fired again", [labels.alertname, recent_fixes[0].action, recent_fixes[0].outcome_at]) if {
	count(windows) == 0
	count(recent_fixes) > 0
}

# Blast radius: while more of the service's callers than `max_firing_dependents` have incidents
# firing, a wider incident is under way and a change to this one service is not its fix.
max_firing_dependents := object.get(input, "max_firing_dependents", 0)

firing_dependents := [d.service | some d in object.get(input, "dependents", []); d.firing == true]

held := sprintf("%d services that call %s have incidents firing (%s): a wider incident is under way", [count(firing_dependents), labels.service, concat(", ", firing_dependents)]) if {
	count(windows) == 0
	count(recent_fixes) == 0
	max_firing_dependents > 0
	count(firing_dependents) > max_firing_dependents
}

decision := wanted if not changes

decision := wanted if {
	changes
	not held
}

decision := {
	"action": "escalate",
	"approval": "required",
	"reason": sprintf("%s; the policy would %s: %s", [held, wanted.action, wanted.reason]),
} if {
	changes
	held
}

# --- tests (selfheal policy test deploy/policies) ---------------------------------------------

critical := {"alertname": "HighErrorRate", "severity": "critical", "auto_heal": "true", "service": "checkout"}

test_rollback_on_critical_error_rate_without_metrics if {
	d := decision with input as {"alert": {"labels": critical}}
	d.action == "rollback"
	d.approval == "auto"
}

test_rollback_when_metrics_confirm if {
	d := decision with input as {"alert": {"labels": critical}, "metrics": {"error_rate": 0.12, "restarts": 5}}
	d.action == "rollback"
	contains(d.reason, "error rate 12%")
}

test_no_rollback_when_metrics_do_not_confirm if {
	d := decision with input as {"alert": {"labels": critical}, "metrics": {"error_rate": 0.01, "restarts": 5}}
	d.action == "none"
	contains(d.reason, "not over 5%")
}

test_no_rollback_with_few_restarts if {
	d := decision with input as {"alert": {"labels": critical}, "metrics": {"error_rate": 0.2, "restarts": 1}}
	d.action == "none"
}

test_escalate_when_prometheus_is_down if {
	d := decision with input as {"alert": {"labels": critical}, "metrics_errors": {"error_rate": "prometheus unavailable: connection refused"}}
	d.action == "escalate"
	contains(d.reason, "prometheus unavailable")
}

test_escalate_after_two_rollbacks if {
	history := [{"action": "rollback"}, {"action": "rollback"}]
	d := decision with input as {"alert": {"labels": critical}, "history": history}
	d.action == "escalate"
}

test_escalate_inside_a_critical_window if {
	window := {"name": "market-open", "kind": "recurring", "until": "2026-12-01T03:00:00Z", "reason": null}
	d := decision with input as {"alert": {"labels": critical}, "windows": [window]}
	d.action == "escalate"
	d.approval == "required"
	contains(d.reason, "critical window \"market-open\" is in force until 2026-12-01T03:00:00Z")
	not contains(d.reason, "null")
	contains(d.reason, "would rollback")
}

test_a_window_does_not_turn_nothing_into_an_escalation if {
	window := {"name": "market-open", "until": "2026-12-01T03:00:00Z"}
	d := decision with input as {"alert": {"labels": {"alertname": "Other"}}, "windows": [window]}
	d.action == "none"
}

test_escalate_when_a_verified_fix_is_needed_again if {
	fix := {"incident": "a1", "action": "rollback", "alertname": "HighErrorRate", "outcome": "verified", "outcome_at": "2026-12-01T10:00:00Z"}
	d := decision with input as {"alert": {"labels": critical}, "history": [fix], "now": "2026-12-01T10:20:00Z"}
	d.action == "escalate"
	contains(d.reason, "HighErrorRate was fixed by a rollback verified at 2026-12-01T10:00:00Z and fired again")
}

test_fix_again_after_the_recently_fixed_hour if {
	fix := {"incident": "a1", "action": "rollback", "alertname": "HighErrorRate", "outcome": "verified", "outcome_at": "2026-12-01T10:00:00Z"}
	d := decision with input as {"alert": {"labels": critical}, "history": [fix], "now": "2026-12-01T11:30:00Z"}
	d.action == "rollback"
}

test_a_fix_of_another_alert_is_no_repeat if {
	fix := {"incident": "a1", "action": "scale", "alertname": "HighCPU", "outcome": "verified", "outcome_at": "2026-12-01T10:00:00Z"}
	d := decision with input as {"alert": {"labels": critical}, "history": [fix], "now": "2026-12-01T10:20:00Z"}
	d.action == "rollback"
}

test_escalate_while_callers_are_firing if {
	callers := [
		{"service": "frontend", "rate": 12.5, "firing": true},
		{"service": "mobile", "rate": 3, "firing": true},
		{"service": "admin", "rate": 0.2, "firing": true},
		{"service": "batch", "rate": 1, "firing": false},
	]
	d := decision with input as {"alert": {"labels": critical}, "dependents": callers, "max_firing_dependents": 2}
	d.action == "escalate"
	contains(d.reason, "3 services that call checkout have incidents firing (frontend, mobile, admin)")
}

test_act_while_few_callers_fire if {
	callers := [{"service": "frontend", "firing": true}, {"service": "batch", "firing": false}]
	d := decision with input as {"alert": {"labels": critical}, "dependents": callers, "max_firing_dependents": 2}
	d.action == "rollback"
}

test_rollbacks_older_than_30_minutes_do_not_count if {
	history := [{"action": "rollback", "at": "2026-12-01T09:00:00Z"}, {"action": "rollback", "at": "2026-12-01T09:10:00Z"}]
	d := decision with input as {"alert": {"labels": critical}, "history": history, "now": "2026-12-01T10:00:00Z"}
	d.action == "rollback"
}

test_warning_needs_approval if {
	approval == "required" with input as {"alert": {"labels": {"severity": "warning"}}}
}

test_no_action_without_opt_in if {
	d := decision with input as {"alert": {"labels": {"alertname": "HighErrorRate", "severity": "critical", "service": "checkout"}}}
	d.action == "none"
}

test_scale_on_high_cpu if {
	d := decision with input as {"alert": {"labels": {"alertname": "HighCPU", "auto_heal": "true", "service": "cart", "severity": "critical"}}, "target": {"replicas": 3}, "metrics": {"cpu": 0.93}}
	d.action == "scale"
	d.params.replicas == 4
}

test_no_scale_when_cpu_is_low if {
	d := decision with input as {"alert": {"labels": {"alertname": "HighCPU", "auto_heal": "true", "service": "cart"}}, "target": {"replicas": 3}, "metrics": {"cpu": 0.3}}
	d.action == "none"
}

test_scale_escalates_at_the_maximum if {
	d := decision with input as {"alert": {"labels": {"alertname": "HighCPU", "auto_heal": "true", "service": "cart"}}, "target": {"replicas": 10}}
	d.action == "escalate"
}

test_scale_respects_the_reported_maximum if {
	d := decision with input as {"alert": {"labels": {"alertname": "HighCPU", "auto_heal": "true", "service": "cart"}}, "target": {"replicas": 3, "max_replicas": 3}}
	d.action == "escalate"
	contains(d.reason, "already at 3")
}
