"""Necks: modules mapping backbone features {level: [B, H_l, W_l, C_l]} to
pyramid features {level: [B, H_l, W_l, width]} for levels min_level..max_level."""
