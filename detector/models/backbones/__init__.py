"""Backbones: modules mapping images [B, H, W, 3] to a dict {level: features}.

Level l has stride 2**l (level 2 is stride 4). Every backbone exposes
`levels`, the levels it returns, so necks can check what they are given.
"""
