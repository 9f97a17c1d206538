output "api_url" {
  description = "URL of the API (https://<domain_name>), for clients and workers."
  value       = local.api_url
}

output "load_balancer_dns_name" {
  description = "DNS name of the load balancer: point domain_name at it when route53_zone_id is null."
  value       = aws_lb.this.dns_name
}

output "load_balancer_zone_id" {
  description = "Hosted zone of the load balancer, for an alias record."
  value       = aws_lb.this.zone_id
}

output "security_group_id" {
  description = "Security group of the API replicas (the database admits it)."
  value       = aws_security_group.replicas.id
}

output "load_balancer_security_group_id" {
  description = "Security group of the load balancer."
  value       = aws_security_group.alb.id
}

output "autoscaling_group_name" {
  description = "Auto Scaling group of the API replicas (start an instance refresh on it to roll them)."
  value       = aws_autoscaling_group.this.name
}

output "ssm_parameter_path" {
  description = "SSM path of the replicas' configuration and secrets."
  value       = var.ssm_parameter_path
}
