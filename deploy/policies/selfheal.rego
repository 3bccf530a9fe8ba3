# selfheal's default remediation policy.
#
# Input (see ARCHITECTURE.md, "policy input"):
#   input.alert     labels, annotations, status, startsAt, fingerprint
#   input.incident  the incident key
#   input.target    what the GitOps repository says about the service, when known
#   input.now       RFC 3339 time of evaluation
#
# Output: data.selfheal.decision, an object with
#   action    "rollback" | "scale" | "restart" | "none" | "escalate"
#   reason    why, for the person on call
#   approval  "auto" (merged at once) | "required" (waits for a person)
#   params    {"target_tag": "..."} for rollback (empty: the previous tag in git history),
#             {"replicas": n} for scale
package selfheal

import rego.v1

labels := input.alert.labels

default allow_rollback := false

# A critical error-rate alert on a service that opted in to self-healing: roll back the image.
allow_rollback if {
	labels.alertname == "HighErrorRate"
	labels.severity == "critical"
	labels.auto_heal == "true"
}

default allow_scale := false

allow_scale if {
	labels.alertname == "HighCPU"
	labels.auto_heal == "true"
}

max_replicas := 10

default decision := {
	"action": "none",
	"approval": "required",
	"reason": "no remediation rule matches this alert",
}

decision := {
	"action": "rollback",
	"approval": "auto",
	"reason": sprintf("%s is critical for %s: roll back to the previous image", [labels.alertname, labels.service]),
} if allow_rollback

decision := {
	"action": "scale",
	"approval": "auto",
	"params": {"replicas": replicas},
	"reason": sprintf("%s for %s: scale from %d to %d replicas", [labels.alertname, labels.service, input.target.replicas, replicas]),
} if {
	allow_scale
	not allow_rollback
	is_number(input.target.replicas)
	input.target.replicas < max_replicas
	replicas := input.target.replicas + 1
}

decision := {
	"action": "escalate",
	"approval": "required",
	"reason": sprintf("%s for %s, but its replica count is unknown or already at %d: a person must look", [labels.alertname, labels.service, max_replicas]),
} if {
	allow_scale
	not allow_rollback
	not scalable
}

scalable if {
	is_number(input.target.replicas)
	input.target.replicas < max_replicas
}

test_rollback_on_critical_error_rate if {
	decision.action == "rollback" with input as {"alert": {"labels": {"alertname": "HighErrorRate", "severity": "critical", "auto_heal": "true", "service": "checkout"}}}
}

test_no_action_without_opt_in if {
	decision.action == "none" with input as {"alert": {"labels": {"alertname": "HighErrorRate", "severity": "critical", "service": "checkout"}}}
}

test_scale_on_high_cpu if {
	d := decision with input as {"alert": {"labels": {"alertname": "HighCPU", "auto_heal": "true", "service": "cart"}}, "target": {"replicas": 3}}
	d.action == "scale"
	d.params.replicas == 4
}
