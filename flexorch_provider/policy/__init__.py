"""Team policy for self-service runs: the file's model (:mod:`.model`), its rules
(:mod:`.rules`) and the ledger of what submitted runs used (:mod:`.ledger`)."""

from flexorch_provider.policy.ledger import Ledger, period_start
from flexorch_provider.policy.model import FILE_NAME, POLICY_ENV, Budget, Policy, Team, load_policy, policy_file
from flexorch_provider.policy.rules import (
    budget_refusal,
    concurrency_refusal,
    gpus_of,
    policy_problems,
    static_refusals,
)

__all__ = [
    "FILE_NAME",
    "POLICY_ENV",
    "Budget",
    "Ledger",
    "Policy",
    "Team",
    "budget_refusal",
    "concurrency_refusal",
    "gpus_of",
    "load_policy",
    "period_start",
    "policy_file",
    "policy_problems",
    "static_refusals",
]
