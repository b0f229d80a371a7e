"""Play events after a model's cut-off: validated at the edge (`schema`), kept in a durable
append-only log (`log`), folded per member into live state (`state`) and served as a
member-local History layered over the model's snapshot (`member_history`).

docs/events.md says what a user needs: the endpoint, the CLI, durability, the memory bound,
what is live and what is not.
"""
