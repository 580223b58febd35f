"""Before translation, the control plane imports the policies a config names: which it lowers to Envoy, which
`xgate authz` runs, which it refuses. What it found travels in the IR, on the policy plugin's settings.

- A `xgate.authz.rules.Rule` is lowered (translate/plugins/policy_rbac.py); anything else runs in `xgate authz`.
- A module that raises RuleError on import (the declarative API refused what it was asked) is a config issue at
  `plugins.policy.policies.<name>`: the file is refused, an etcd revision serves the routes naming it as before.
- A module the control plane cannot import otherwise (not installed where it runs, a bug at import) is not
  refused here: the policy goes to `xgate authz`, which must import it to serve it and refuses the revision if it
  cannot, and a note says the control plane could not look at it (a rule is then run in Python: the same
  decisions, at Python's cost).
- Imports run in the compile step, on the control plane's event loop for small configs and in its worker thread
  for large ones (controlplane.py); a module whose source changed since is imported again (PolicyModules).
"""

from __future__ import annotations

from xgate.authz.policy import PolicyModules
from xgate.authz.rules import Rule
from xgate.config.load import ConfigSet
from xgate.config.schema import Model
from xgate.errors import ConfigIssue, PolicyLoadError, RuleError
from xgate.plugins.policy import PolicySettings


class PolicyResolver:
    """Resolves policy settings (`resolve_plugins`); keeps the modules it imported across builds, and in
    `notes` what the last build could not look at."""

    def __init__(self) -> None:
        self._modules = PolicyModules()
        self.notes: list[str] = []

    def start(self) -> None:
        """A new build: its notes replace the last one's."""
        self.notes = []

    def resolve(self, settings: PolicySettings) -> tuple[PolicySettings, dict[str, str]]:
        """The settings knowing which policies are lowered, and {name: reason} of those refused."""
        lowered: dict[str, Rule] = {}
        refused: dict[str, str] = {}
        for name, path in sorted(settings.policies.items()):
            try:
                found = self._modules.find(path)
            except PolicyLoadError as exc:
                if isinstance(exc.__cause__, RuleError):
                    refused[name] = exc.reason
                else:
                    self._note(f"policy {name} ({path}): not lowered, xgate authz runs it: {exc.reason}")
                continue
            if isinstance(found, Rule):
                lowered[name] = found
        return settings.resolved(lowered, refused), refused

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


def resolve_plugins(
    resolver: PolicyResolver,
    config: ConfigSet,
    kind: str,
    name: str,
    plugins: dict[str, Model | None],
    issues: list[ConfigIssue],
) -> None:
    """Replace the policy settings among some document/listener `plugins` by resolved ones; a refused policy is
    an issue of that object's `plugins.policy.policies.<name>`."""
    settings = plugins.get("policy")
    if not isinstance(settings, PolicySettings) or not settings.policies:
        return
    plugins["policy"], refused = resolver.resolve(settings)
    for policy, reason in refused.items():
        issues.append(config.issue(kind, name, f"plugins.policy.policies.{policy}", reason))
