"""Pictures of what the models do: heatmaps, attention views, widgets (with static twins)."""
