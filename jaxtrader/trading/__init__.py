"""Paper trading: feeds, the strategy manager, risk limits, the paper broker and SQLite state."""
