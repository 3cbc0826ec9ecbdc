"""Running a Lago deployment with Docker Compose (`zbilling lago …`). Stands alone: imports
nothing else of ours.
"""
