"""Business logic: views, tasks, consumers and commands call these modules and nothing else writes rows."""
