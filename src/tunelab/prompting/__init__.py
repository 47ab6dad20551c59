"""Prompt engineering: zero/one/few-shot prompts, chat templates, context-window checks."""

from tunelab.prompting.templates import Prompt, PromptBuilder, PromptTemplate, ShotSelector

__all__ = ["Prompt", "PromptBuilder", "PromptTemplate", "ShotSelector"]
