"""What an objective's hyperparameter is: its name, type, default, the values it takes, and
the spellings other tools give it.

An objective lists its hyperparameters once, next to its formula. The config accepts any
spelling some registered objective declares as a key of its own (``--beta``,
``--simpo_gamma``), ``preftune.objectives.method`` checks the values against the chosen objective's
declarations, and ``preftune methods``, ``preftune train --help`` and docs/config.md print
them. A new hyperparameter is therefore one declaration in its objective's file.
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.errors import ConfigError
from preftune.objectives.interval import ANY, NON_NEGATIVE, POSITIVE, Interval


@dataclass(frozen=True)
class HyperParameter:
    """One hyperparameter of an objective's formula.

    Attributes:
        name: the key the formula reads, and the spelling the config prefers.
        default: its value when the config gives none.
        doc: one line, a noun phrase saying what it is: the help text, and what an error
            says a method lacks ("dpo has no <doc>").
        bounds: the values it takes; others are refused before anything loads.
        aliases: other tools' spellings of the same value (TRL's ``simpo_gamma``).
        scaled_aliases: spellings of this value divided by another hyperparameter:
            ``(("gamma_beta_ratio", "beta"),)`` reads gamma = gamma_beta_ratio x beta.
        type: float or int.
        option: an addition to the formula that its default turns off (AlphaPO's alpha):
            a run's description names it only when set.
    """

    name: str
    default: float
    doc: str
    bounds: Interval = ANY
    aliases: tuple[str, ...] = ()
    scaled_aliases: tuple[tuple[str, str], ...] = ()
    type: type = float
    option: bool = False

    def __post_init__(self) -> None:
        if self.default not in self.bounds:
            raise ValueError(f"{self.name}: default {self.default} is not {self.bounds}")

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name, *self.aliases, *(alias for alias, _ in self.scaled_aliases))

    def check(self, value: float, spelling: str) -> float:
        """``value`` as this hyperparameter's type, refused outside its bounds."""
        if self.type is int and float(value) != int(value):
            raise ConfigError(f"{spelling}: expected a whole number, got {value}")
        value = self.type(value)
        if value not in self.bounds:
            raise ConfigError(f"{spelling} ({self.doc}) must be {self.bounds}, got {value}")
        return value


def beta(default: float, doc: str = "inverse temperature beta: the scale of the implicit "
                                    "reward, how far the policy may move") -> HyperParameter:
    """The beta every objective here divides or multiplies by; > 0."""
    return HyperParameter("beta", default, doc, POSITIVE)


LABEL_SMOOTHING = HyperParameter(
    "label_smoothing", 0.0,
    "label smoothing eps: the assumed share of flipped preference labels (cDPO)",
    # At 0.5 the loss of a pair equals that of the swapped pair: nothing is learned.
    Interval(0.0, 0.5, high_open=True))


# The unpaired objectives' (KTO, APO-zero unpaired) weights of the two kinds of example.
DESIRABLE_WEIGHT = HyperParameter("desirable_weight", 1.0, "weight lambda_D of the desirable "
                                  "examples' losses (TRL's desirable_weight)", NON_NEGATIVE)
UNDESIRABLE_WEIGHT = HyperParameter("undesirable_weight", 1.0, "weight lambda_U of the "
                                    "undesirable examples' losses (TRL's undesirable_weight)",
                                    NON_NEGATIVE)
