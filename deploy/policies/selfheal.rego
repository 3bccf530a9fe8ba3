# selfheal's default remediation policy.
#
# Input (README, "The policy input"):
#   input.alert           labels, annotations, status, startsAt, endsAt, fingerprint
#   input.incident        the incident key
#   input.metrics         metric name -> number, for the configured PromQL queries that could be read
#   input.metrics_errors  metric name -> why it could not be read (absent is never zero)
#   input.history         this service's automatic actions in the limit window: [{incident, action, at}]
#   input.target          what the GitOps repository says about the service, when known
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

recent_rollbacks := count([h | some h in input.history; h.action == "rollback"])

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

default decision := {
	"action": "none",
	"approval": "required",
	"reason": "no remediation rule matches this alert",
}

decision := rollback_decision if allow_rollback

decision := scale_decision if {
	allow_scale
	not allow_rollback
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
