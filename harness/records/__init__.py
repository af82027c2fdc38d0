"""Records: run records, their provenance and cost (`results`, `provenance`, `cost`), leaderboards (`leaderboard`),
regression checks against committed expectations (`regression`), and PNG plots (`plots`)."""
