"""Records: run records and their provenance (`results`, `provenance`), leaderboards (`leaderboard`), regression
checks against committed expectations (`regression`), and PNG plots (`plots`)."""
