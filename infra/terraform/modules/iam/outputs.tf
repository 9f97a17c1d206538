output "role_arn" {
  description = "ARN of the control plane's role."
  value       = aws_iam_role.control_plane.arn
}

output "role_name" {
  description = "Name of the control plane's role."
  value       = aws_iam_role.control_plane.name
}

output "instance_profile_name" {
  description = "Instance profile of the control plane's instances."
  value       = aws_iam_instance_profile.control_plane.name
}

output "instance_profile_arn" {
  description = "ARN of the control plane's instance profile."
  value       = aws_iam_instance_profile.control_plane.arn
}
