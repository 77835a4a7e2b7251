"""The privileged context types c the teacher may see (``data.context``), each with its built-in templates.

The one list of them: the configuration's choices and the prompt builder's templates are read from
``PRIVILEGED_CONTEXTS``, so a new type is one entry here (its template under ``prompt_template: custom`` and
under the paper's Fig. 4 prompts). ``none`` (no context) and ``custom`` (``data.context_templates.custom``)
are the two types without a built-in template.
"""

from __future__ import annotations

from dataclasses import dataclass

# The paper's instruction after the Fig. 4 hints that give the answer.
FIG4_INSTRUCTION = (
    "[Instruction] If possible, derive the answer {answer} using an alternative, equally rigorous mathematical "
    "approach (e.g., algebraic vs geometric, or different substitution). If no alternative exists, articulate the "
    "standard approach with exceptional clarity. Do NOT state that you were given the answer or reference."
)


@dataclass(frozen=True)
class PrivilegedContext:
    """Templates of one context type, with ``{problem}``, ``{answer}``, ``{solution}``."""

    default: str  # ``data.prompt_template: custom`` (the built-in default)
    fig4: str  # ``data.prompt_template: sdpg_fig4``: the SDPG paper's Fig. 4 hint


PRIVILEGED_CONTEXTS: dict[str, PrivilegedContext] = {
    "answer": PrivilegedContext(
        default="The reference answer to this problem is {answer}.",
        fig4="[Hint] The correct answer is {answer}.\n\n" + FIG4_INSTRUCTION,
    ),
    "solution": PrivilegedContext(
        default="Here is a reference solution to this problem:\n{solution}",
        fig4="[Hint] A common way to solve this is:\n{solution}",
    ),
    # follows the hint of SDPG's Fig. 4
    "answer_solution": PrivilegedContext(
        default=(
            "Here is a reference solution to this problem:\n{solution}\n"
            "The final answer is {answer}.\n"
            "After understanding the reference solution, please try to solve this problem using your own "
            "approach below, without referring to the reference solution."
        ),
        fig4="[Hint] The correct answer is {answer}. A common way to solve this is:\n{solution}\n\n" + FIG4_INSTRUCTION,
    ),
}


def context_types() -> tuple[str, ...]:
    """Every choice of ``data.context``."""
    return ("none", *PRIVILEGED_CONTEXTS, "custom")


def templated_contexts() -> tuple[str, ...]:
    """The keys ``data.context_templates`` may set."""
    return (*PRIVILEGED_CONTEXTS, "custom")
